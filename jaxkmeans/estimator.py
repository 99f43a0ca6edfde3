"""KMeans: TensorFlow's ``tf.compat.v1.estimator.experimental.KMeans`` surface on the
functional core, with Orbax checkpoints in ``model_dir``.

TF's intent is kept (one full-batch step = one Lloyd iteration over a whole pass of the
input; mini-batch steps = one batch each; ``score``/``transform``/``predict`` outputs),
and TF's known bugs are not copied (see the project README).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import secrets
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkmeans import export as export_lib
from jaxkmeans import fitting, initializers, metrics, sharding
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    check_chunk_size,
    check_metric,
    count_distinct_at_least,
)
from jaxkmeans.assignment import resolve_chunk_size
from jaxkmeans.checkpoint import Checkpointer, CheckpointError
from jaxkmeans.checkpoint import latest_checkpoint as _latest_checkpoint_path
from jaxkmeans.initializers import (
    INIT_METHODS,
    KMC2_INIT,
    KMEANS_PARALLEL_INIT,
    KMEANS_PLUS_PLUS_INIT,
    RANDOM_INIT,
)
from jaxkmeans.inputs import InputReader, feature_names
from jaxkmeans.state import KMeansState

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
_MAX_UNTIL_CONVERGED_STEPS = 10_000
# Steps of loss history kept (in memory and in every checkpoint's config): bounded, so
# that saves do not grow with the length of the run.
_HISTORY_KEPT = 1000
_FORMAT = "jaxkmeans-estimator"


class NotFittedError(ValueError, AttributeError):
    """Raised when predicting, scoring or reading variables before any training."""


@dataclasses.dataclass
class RunConfig:
    """Run-time settings of :class:`KMeans` (not part of the model).

    Attributes:
      save_checkpoints_steps: also save every this many steps during ``train()`` (a
        checkpoint is always written when ``train()`` ends). None: only at the end.
      keep_checkpoint_max: how many checkpoints to keep (None: all).
      chunk_size: rows per chunk for distance computations (None: automatic).
      mesh: a ``jax.sharding.Mesh`` to shard batches over (data parallel).
    """

    save_checkpoints_steps: int | None = None
    keep_checkpoint_max: int | None = 5
    chunk_size: int | None = None
    mesh: Any = None

    def __post_init__(self) -> None:
        for name in ("save_checkpoints_steps", "keep_checkpoint_max"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be None or an int >= 1; got {value!r}.")
        self.chunk_size = check_chunk_size(self.chunk_size)
        if self.mesh is not None and not isinstance(self.mesh, jax.sharding.Mesh):
            raise TypeError(
                f"`mesh` must be None or a jax.sharding.Mesh; got {type(self.mesh).__name__}."
            )


def _check_int(value: Any, name: str, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _state_to_dict(state: KMeansState) -> dict[str, np.ndarray]:
    return {VARIABLES[f]: np.asarray(getattr(state, f)) for f in VARIABLES}


def _state_from_dict(values: dict[str, Any]) -> KMeansState:
    return KMeansState(**{f: jnp.asarray(values[v]) for f, v in VARIABLES.items()})


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


@functools.cache
def _jitted_predict(metric: str) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
    """One jitted predict function per metric, shared by every KMeans (a new jit per
    instance would recompile for every model created or restored)."""
    return jax.jit(export_lib.predict_fn(metric))


def _pad_batch(batch: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads a batch to `size` rows with zero-weight rows (one compiled shape per size)."""
    b = batch.shape[0]
    w = np.ones((size,), np.float32)
    if b == size:
        return batch, w
    w[b:] = 0.0
    return np.concatenate([batch, np.zeros((size - b, batch.shape[1]), batch.dtype)]), w


def _bucket(b: int, standard: int | None) -> int:
    """Rows a batch of `b` is padded to: the pass's first batch size when it fits, else
    the next power of two."""
    if standard is not None and b <= standard:
        return standard
    return 1 << max(0, math.ceil(math.log2(b)))


class KMeans:
    """k-means clustering with TensorFlow's estimator interface.

    Args:
      num_clusters: k, the number of clusters (int >= 1).
      model_dir: directory of checkpoints; None makes a temporary one. If it holds
        checkpoints, the newest is restored (a config that does not fit raises
        ValueError).
      initial_clusters: ``"random"``, ``"kmeans_plus_plus"``, ``"kmc2"``,
        ``"kmeans_parallel"``, a (k, d) array, or a callable ``f(batch, k_remaining)``
        returning 0..k_remaining rows, called on successive batches.
      distance_metric: ``"squared_euclidean"`` or ``"cosine"`` (spherical k-means).
      seed: int seed; the same seed, data and config give bit-identical centers. None
        draws one (stored in the checkpoint).
      use_mini_batch: True for mini-batch steps (one batch each), False for full-batch
        Lloyd steps (one pass each).
      mini_batch_steps_per_iteration: s >= 1; with s > 1 the mini-batch updates go to a
        working copy that becomes the model every s steps (counts restart then).
      kmeans_plus_plus_num_retries: extra candidates per k-means++ pick (negative:
        2 + ln k).
      relative_tolerance: stop training once ``|prev - loss| / (1 + |prev|)`` falls below
        it (full batch: the pass loss; mini-batch: the smoothed per-point batch loss).
      config: a :class:`RunConfig`.
      feature_columns: names of the dict features to use, in order (default: all,
        sorted by name).
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
        initial_clusters: Any = RANDOM_INIT,
        distance_metric: str = SQUARED_EUCLIDEAN_DISTANCE,
        seed: int | None = None,
        use_mini_batch: bool = True,
        mini_batch_steps_per_iteration: int = 1,
        kmeans_plus_plus_num_retries: int = 2,
        relative_tolerance: float | None = None,
        config: RunConfig | None = None,
        feature_columns: Any = None,
    ):
        self._num_clusters = _check_int(num_clusters, "num_clusters", 1)
        self._metric = check_metric(distance_metric, "distance_metric")
        self._initial_clusters, self._init_array = self._check_initial_clusters(initial_clusters)
        if seed is not None:
            _check_int(seed, "seed", 0)
        if not isinstance(use_mini_batch, bool | np.bool_):
            raise TypeError(f"`use_mini_batch` must be a bool; got {use_mini_batch!r}.")
        self._use_mini_batch = bool(use_mini_batch)
        self._steps_per_iteration = _check_int(
            mini_batch_steps_per_iteration, "mini_batch_steps_per_iteration", 1
        )
        if isinstance(kmeans_plus_plus_num_retries, bool) or not isinstance(
            kmeans_plus_plus_num_retries, int | np.integer
        ):
            raise TypeError(
                "`kmeans_plus_plus_num_retries` must be an int; "
                f"got {kmeans_plus_plus_num_retries!r}."
            )
        self._num_retries = int(kmeans_plus_plus_num_retries)
        if relative_tolerance is not None:
            if isinstance(relative_tolerance, bool) or not isinstance(
                relative_tolerance, int | float | np.floating
            ):
                raise TypeError(
                    "`relative_tolerance` must be None or a float >= 0; "
                    f"got {relative_tolerance!r}."
                )
            if not relative_tolerance >= 0:
                raise ValueError(
                    "`relative_tolerance` must be None or a float >= 0; "
                    f"got {relative_tolerance!r}."
                )
            relative_tolerance = float(relative_tolerance)
        self._relative_tolerance = relative_tolerance
        if config is None:
            config = RunConfig()
        if not isinstance(config, RunConfig):
            raise TypeError(f"`config` must be a jaxkmeans.RunConfig; got {type(config).__name__}.")
        self._config = config
        self._mesh = None if config.mesh is None else sharding.auto_mesh(config.mesh)
        self._feature_names = feature_names(feature_columns)

        if model_dir is None:
            model_dir = tempfile.mkdtemp(prefix="jaxkmeans-")
        self._model_dir = str(pathlib.Path(model_dir).expanduser().resolve())
        self._ckpt = Checkpointer(self._model_dir, max_to_keep=config.keep_checkpoint_max)
        self._state: KMeansState | None = None
        self._dims: int | None = (
            None if self._init_array is None else int(self._init_array.shape[1])
        )
        self._seed = None if seed is None else int(seed)
        self._history: list[list[float]] = []
        self._rows_per_pass: int | None = None
        # Mini-batch: batches of the current pass already trained on, so that a later
        # train() (or a run resumed from a checkpoint) continues where this one stopped.
        self._pass_position = 0
        self._restore()
        if self._seed is None:
            self._seed = secrets.randbits(31)
        self._saved = self._snapshot()
        self._predict_jit = _jitted_predict(self._metric)

    # ------------------------------------------------------------------ construction

    def _check_initial_clusters(self, init: Any) -> tuple[Any, np.ndarray | None]:
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
        if arr.shape[0] != self._num_clusters:
            raise ValueError(
                f"`initial_clusters` has {arr.shape[0]} rows but num_clusters is "
                f"{self._num_clusters}; they must match."
            )
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("`initial_clusters` must be finite; it has NaN or inf.")
        if count_distinct_at_least(arr, self._num_clusters) < self._num_clusters:
            raise ValueError("`initial_clusters` must have distinct rows; some rows repeat.")
        return "array", arr

    def _params_json(self) -> dict[str, Any]:
        return {
            "num_clusters": self._num_clusters,
            "distance_metric": self._metric,
            "initial_clusters": self._initial_clusters
            if isinstance(self._initial_clusters, str)
            else "callable",
            "use_mini_batch": self._use_mini_batch,
            "mini_batch_steps_per_iteration": self._steps_per_iteration,
            "kmeans_plus_plus_num_retries": self._num_retries,
            "relative_tolerance": self._relative_tolerance,
            "feature_columns": self._feature_names,
        }

    def _config_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": 1,
            **self._params_json(),
            "dims": self._dims,
            "seed": self._seed,
            "rows_per_pass": self._rows_per_pass,
            "pass_position": self._pass_position,
            "loss_history": self._settled_history(),
        }

    def _restore(self) -> None:
        try:
            step = self._ckpt.latest_step()
        except CheckpointError:
            raise
        if step is None:
            return
        cfg = self._ckpt.read_config()
        if cfg.get("format") != _FORMAT:
            raise ValueError(
                f"`model_dir` {self._model_dir!r} holds checkpoints that were not written by "
                "jaxkmeans.KMeans."
            )
        problems = []
        if cfg["num_clusters"] != self._num_clusters:
            problems.append(f"num_clusters={cfg['num_clusters']} (asked {self._num_clusters})")
        if cfg["distance_metric"] != self._metric:
            problems.append(f"distance_metric={cfg['distance_metric']!r} (asked {self._metric!r})")
        if self._dims is not None and cfg["dims"] != self._dims:
            problems.append(f"dims={cfg['dims']} (initial_clusters has {self._dims})")
        if problems:
            raise ValueError(
                f"the checkpoint in model_dir {self._model_dir!r} does not fit this KMeans: it "
                f"has {', '.join(problems)}. Use another model_dir or matching parameters."
            )
        _, values, cfg = self._ckpt.restore(_state_template(cfg["num_clusters"], cfg["dims"]))
        self._state = self._replicated(_state_from_dict(values))
        self._dims = int(cfg["dims"])
        if self._seed is None:
            self._seed = cfg.get("seed")
        self._history = [list(h) for h in cfg.get("loss_history", [])]
        self._rows_per_pass = cfg.get("rows_per_pass")
        self._pass_position = int(cfg.get("pass_position", 0))

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            self._state,
            self._dims,
            copy.deepcopy(self._history),
            self._rows_per_pass,
            self._pass_position,
        )

    def _rollback(self) -> None:
        (
            self._state,
            self._dims,
            self._history,
            self._rows_per_pass,
            self._pass_position,
        ) = self._saved
        self._history = copy.deepcopy(self._history)

    def _save(self) -> None:
        state = self._state
        self._ckpt.save(int(state.step), _state_to_dict(state), self._config_json())
        self._saved = self._snapshot()

    # ------------------------------------------------------------------ properties

    @property
    def model_dir(self) -> str:
        """Absolute path of the checkpoint directory."""
        return self._model_dir

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's hyperparameters."""
        return {
            "num_clusters": self._num_clusters,
            "initial_clusters": self._init_array
            if self._init_array is not None
            else self._initial_clusters,
            "distance_metric": self._metric,
            "seed": self._seed,
            "use_mini_batch": self._use_mini_batch,
            "mini_batch_steps_per_iteration": self._steps_per_iteration,
            "kmeans_plus_plus_num_retries": self._num_retries,
            "relative_tolerance": self._relative_tolerance,
            "feature_columns": self._feature_names,
        }

    @property
    def model_fn(self) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
        """The pure, jittable ``(centers, x) -> {"cluster_index", "all_distances"}``."""
        return export_lib.predict_fn(self._metric)

    @property
    def global_step(self) -> int:
        """Number of updates applied so far (0 before training)."""
        return 0 if self._state is None else int(self._state.step)

    @property
    def loss_history(self) -> list[tuple[int, float]]:
        """``(global_step, loss)`` of the last (up to 1000) training steps (full batch: the
        pass loss; mini-batch: the batch loss per point)."""
        return [(s, v) for s, v in self._settled_history()]

    def _settled_history(self) -> list[list[Any]]:
        """The kept history with device scalars read back (each only once)."""
        del self._history[:-_HISTORY_KEPT]
        for entry in self._history:
            if not isinstance(entry[1], float):
                entry[0], entry[1] = int(entry[0]), float(entry[1])
        return self._history

    def eval_dir(self, name: str | None = None) -> str:
        """``model_dir/eval`` or ``model_dir/eval_<name>``: where evaluate() logs."""
        return os.path.join(self._model_dir, "eval" if not name else f"eval_{name}")

    # ------------------------------------------------------------------ training

    def _reader(self, input_fn: Any) -> InputReader:
        return InputReader(input_fn, self._feature_names, self._dims)

    def _chunk(self, b: int) -> int:
        return resolve_chunk_size(
            self._config.chunk_size, b, self._num_clusters, self._dims, np.float32
        )

    def _initialize(self, reader: InputReader) -> Iterator[np.ndarray]:
        """Creates the state from the first batches; returns the first pass's batches
        (the ones used for initialization included: they are not used up)."""
        k = self._num_clusters
        it = reader.batches()
        seen: list[np.ndarray] = []
        key = jax.random.PRNGKey(self._seed)
        key, init_key = jax.random.split(key)
        if self._init_array is not None:
            centers = self._init_array
            if not seen:  # one batch read (not used up) for the frame origin
                first = next(it, None)
                if first is None:
                    raise ValueError("the input is empty: train() needs at least one row.")
                seen.append(first)
            if reader.dims != centers.shape[1]:
                raise ValueError(
                    f"`initial_clusters` has {centers.shape[1]} columns but the input has "
                    f"{reader.dims} features."
                )
        elif callable(self._initial_clusters):
            rows: list[np.ndarray] = []
            got = 0
            for batch in it:
                seen.append(batch)
                out = self._initial_clusters(batch, k - got)
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
        else:
            sample = None
            for batch in it:
                seen.append(batch)
                sample = np.concatenate(seen) if len(seen) > 1 else batch
                if sample.shape[0] >= k and self._distinct(sample) >= k:
                    break
            if sample is None:
                raise ValueError("the input is empty: train() needs at least one row.")
            distinct = self._distinct(sample)
            if distinct < k:
                what = (
                    "distinct non-zero directions"
                    if self._metric == COSINE_DISTANCE
                    else "distinct points"
                )
                raise ValueError(
                    f"num_clusters={k} is more than the input's {distinct} {what}; "
                    "k-means needs at least num_clusters of them."
                )
            centers = initializers.init_impl(
                init_key,
                jnp.asarray(sample),
                None,
                k,
                self._initial_clusters,
                self._metric,
                num_retries=self._num_retries,
            )
        centers = jnp.asarray(centers, jnp.float32)
        if self._metric == COSINE_DISTANCE:
            centers = metrics.normalize_rows(centers)
        self._dims = reader.dims
        if self._mesh is not None:  # every process starts from process 0's centers
            centers = jnp.asarray(sharding.broadcast_from_first(centers))
        # The frame origin (fixed for the life of the model) is the mean of the rows
        # seen so far, so distances stay accurate even if a center is far from the data.
        sample = np.concatenate(seen) if seen else np.asarray(centers)
        origin = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        if self._mesh is not None:
            origin = sharding.broadcast_from_first(origin)
        self._state = self._replicated(KMeansState.create(centers, key=key, origin=origin))
        return itertools.chain(seen, it)

    def _distinct(self, sample: np.ndarray) -> int:
        if self._metric == COSINE_DISTANCE:
            norms = np.linalg.norm(sample, axis=1)
            sample = sample[norms > 0] / norms[norms > 0, None]
        return count_distinct_at_least(sample, self._num_clusters)

    def train(self, input_fn: Any, steps: int | None = None, max_steps: int | None = None):
        """Trains the model.

        Args:
          input_fn: the input (see :mod:`jaxkmeans.inputs`) or a callable returning it.
          steps: run this many more steps.
          max_steps: run until ``global_step == max_steps`` (nothing if already there).
            With neither: one pass over the input (one step in full batch, one epoch of
            batches in mini-batch), or, with ``relative_tolerance``, until it stops
            training (at most 10,000 steps).

        Returns:
          self.
        """
        steps = _check_int(steps, "steps", 1, allow_none=True)
        max_steps = _check_int(max_steps, "max_steps", 1, allow_none=True)
        if steps is not None and max_steps is not None:
            raise ValueError(
                f"give `steps` or `max_steps`, not both; got steps={steps}, max_steps={max_steps}."
            )
        if max_steps is not None and self.global_step >= max_steps:
            return self
        reader = self._reader(input_fn)
        try:
            self._train(reader, steps, max_steps)
        except BaseException:
            self._rollback()
            raise
        return self

    def _train(self, reader: InputReader, steps: int | None, max_steps: int | None) -> None:
        start = self._step = self.global_step
        first_pass = None
        if self._state is None:
            first_pass = self._initialize(reader)
        target = start + steps if steps is not None else max_steps
        until_converged = target is None and self._relative_tolerance is not None
        if until_converged:
            target = start + _MAX_UNTIL_CONVERGED_STEPS
        if self._use_mini_batch:
            stopped = self._train_minibatch(reader, first_pass, target)
        else:
            stopped = self._train_full(reader, first_pass, target)
        if until_converged and not stopped and self.global_step >= target:
            warnings.warn(
                f"relative_tolerance={self._relative_tolerance} was not reached in "
                f"{_MAX_UNTIL_CONVERGED_STEPS} steps; training stopped there.",
                RuntimeWarning,
                stacklevel=3,
            )
        self._save()

    def _after_step(self, loss: Any, prev: Any, reported: Any) -> bool:
        """Bookkeeping after one update; True when the tolerance rule says stop.

        The losses may be device scalars: they are only read back when the tolerance
        rule needs them (or at the next save), so the host does not wait on every step.
        """
        step = self._step
        self._history.append([step, reported])
        if len(self._history) > 2 * _HISTORY_KEPT:
            del self._history[:-_HISTORY_KEPT]
        every = self._config.save_checkpoints_steps
        if every is not None and step % every == 0:
            self._save()
        tol = self._relative_tolerance
        if tol is None:
            return False
        prev, loss = float(prev), float(loss)
        if math.isnan(prev):
            return False
        return abs(prev - loss) / (1.0 + abs(prev)) < tol

    def _replicated(self, state: KMeansState) -> KMeansState:
        return state if self._mesh is None else sharding.replicate(state, self._mesh)

    def _host_centers(self) -> np.ndarray:
        """The centers as a host array (inference runs locally on every process)."""
        return np.asarray(self._require_fitted().centers)

    def _synced(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The batches, in lock step with the other processes: every process takes part
        in every step (a process out of batches contributes an empty one) until all
        are out."""
        if self._mesh is None or jax.process_count() == 1:
            yield from batches
            return
        it = iter(batches)
        while True:
            batch = next(it, None)
            if not sharding.any_process(batch is not None):
                return
            yield batch if batch is not None else np.zeros((0, self._dims), np.float32)

    def _place(self, batch: np.ndarray, standard: int | None) -> tuple[Any, Any, int]:
        """Pads a batch to its bucket size with zero-weight rows and puts it on the
        device(s); returns ``(x, w, real rows over all processes)``."""
        b = batch.shape[0]
        if b == 0:
            padded, w = np.zeros((1, self._dims), np.float32), np.zeros((1,), np.float32)
        else:
            padded, w = _pad_batch(batch, _bucket(b, standard))
        if self._mesh is None:
            return jnp.asarray(padded), jnp.asarray(w), b
        return sharding.shard_rows(padded, w, self._mesh, valid=b)

    def _train_full(self, reader: InputReader, first_pass, target: int | None) -> bool:
        one_pass = target is None
        while one_pass or self._step < target:
            batches = first_pass if first_pass is not None else reader.batches()
            first_pass = None
            state = self._state
            acc = None
            standard = None
            rows = 0
            pending: list[Any] = []
            for batch in self._synced(batches):
                standard = standard or batch.shape[0] or None
                x, w, b = self._place(batch, standard)
                rows += b
                acc = fitting.pass_add(
                    acc,
                    state.centers,
                    state.origin,
                    x,
                    w,
                    metric=self._metric,
                    chunk=self._chunk(x.shape[0]),
                    mesh=self._mesh,
                )
                # Bound the batches in flight (JAX dispatches asynchronously): the next
                # batch is read while this one computes, but no further ahead.
                pending.append(acc.loss)
                if len(pending) > 2:
                    jax.block_until_ready(pending.pop(0))
            if acc is None or rows == 0:
                raise ValueError("the input is empty: a pass over it gave no rows.")
            self._rows_per_pass = rows
            new_centers, stats = fitting.pass_end(
                acc, state.centers, state.origin, metric=self._metric
            )
            loss = float(stats.loss)
            prev = float(state.loss)
            self._state = state.replace(
                centers=new_centers,
                working=new_centers,
                counts=stats.counts,
                step=state.step + 1,
                loss=jnp.asarray(loss, jnp.float32),
                prev_loss=state.loss,
            )
            if self._mesh is not None:
                self._state = sharding.replicate(self._state, self._mesh)
            self._step += 1
            if self._after_step(loss, prev, loss):
                return True
            if one_pass:
                return False
        return False

    def _train_minibatch(self, reader: InputReader, first_pass, target: int | None) -> bool:
        one_pass = target is None
        batches = first_pass if first_pass is not None else reader.batches()
        # Continue the pass an earlier train() (or the run a checkpoint came from) left
        # unfinished: skip the batches it already used. A one-shot iterator passed
        # directly is already past them.
        skip = 0 if reader.one_shot else self._pass_position
        if reader.one_shot:
            self._pass_position = 0
        pending: list[Any] = []
        while True:
            standard = None
            rows = 0
            got_any = False
            trained = False
            for batch in self._synced(batches):
                got_any = True
                standard = standard or batch.shape[0] or None
                if skip:
                    skip -= 1
                    rows += batch.shape[0]
                    continue
                trained = True
                x, w, b = self._place(batch, standard)
                rows += b
                n_pass = self._rows_per_pass or rows
                alpha = min(1.0, 2.0 * b / (n_pass + 1))
                state, loss = fitting.minibatch_impl(
                    self._state,
                    x,
                    w,
                    alpha,
                    self._metric,
                    self._chunk(x.shape[0]),
                    "float32",
                    fitting.default_update_method(x.dtype, self._metric),
                    self._steps_per_iteration,
                    self._mesh,
                )
                self._state = state
                self._step += 1
                self._pass_position += 1
                # Bound the work in flight: JAX dispatches asynchronously.
                pending.append(state.step)
                if len(pending) > 2:
                    jax.block_until_ready(pending.pop(0))
                if self._after_step(state.smoothed_loss, state.prev_loss, loss / b):
                    return True
                if target is not None and self._step >= target:
                    return False
            if not got_any:
                raise ValueError("the input is empty: a pass over it gave no rows.")
            self._rows_per_pass = rows
            self._pass_position = 0
            skip = 0
            if one_pass and trained:
                return False
            batches = reader.batches()

    # ------------------------------------------------------------------ inference

    def _require_fitted(self) -> KMeansState:
        if self._state is None:
            raise NotFittedError(
                "this KMeans is not trained yet (no checkpoint in model_dir "
                f"{self._model_dir!r}); call train() first."
            )
        return self._state

    def _predict_batches(self, input_fn: Any) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        centers = self._host_centers()
        reader = self._reader(input_fn)

        def gen():
            for batch in reader.batches():
                b = batch.shape[0]
                padded, w = _pad_batch(batch, _bucket(b, None))
                out = self._predict_jit(centers, padded, w)
                yield batch, {k: np.asarray(v)[:b] for k, v in out.items()}

        return gen()

    def predict(
        self,
        input_fn: Any,
        predict_keys: str | list[str] | None = None,
        yield_single_examples: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Yields ``{"cluster_index": int, "all_distances": float32[k]}`` per example
        (or per batch with ``yield_single_examples=False``); ``all_distances`` are squared
        Euclidean distances (or 1 - cos)."""
        keys = [CLUSTER_INDEX, ALL_DISTANCES]
        if predict_keys is not None:
            wanted = [predict_keys] if isinstance(predict_keys, str) else list(predict_keys)
            bad = [k for k in wanted if k not in keys]
            if bad or not wanted:
                raise ValueError(
                    f"`predict_keys` must be a subset of {keys}; got {predict_keys!r}."
                )
            keys = wanted
        batches = self._predict_batches(input_fn)

        def gen():
            for _, out in batches:
                if yield_single_examples:
                    for i in range(out[CLUSTER_INDEX].shape[0]):
                        yield {
                            k: (int(out[k][i]) if k == CLUSTER_INDEX else out[k][i]) for k in keys
                        }
                else:
                    yield {k: out[k] for k in keys}

        return gen()

    def predict_cluster_index(self, input_fn: Any) -> Iterator[int]:
        """Yields the nearest center's index for every example."""
        batches = self._predict_batches(input_fn)
        return (int(i) for _, out in batches for i in out[CLUSTER_INDEX])

    def transform(self, input_fn: Any) -> Iterator[np.ndarray]:
        """Yields every example's distances to all centers: Euclidean (square root of the
        squared distance, clamped at 0) or 1 - cos for cosine."""
        batches = self._predict_batches(input_fn)
        cosine = self._metric == COSINE_DISTANCE

        def gen():
            for _, out in batches:
                d = out[ALL_DISTANCES]
                d = d if cosine else np.sqrt(np.maximum(d, 0.0))
                yield from d

        return gen()

    def _total_distance(self, input_fn: Any, steps: int | None = None) -> float:
        centers = self._host_centers()
        reader = self._reader(input_fn)
        total = 0.0
        rows = 0
        for i, batch in enumerate(reader.batches()):
            if steps is not None and i >= steps:
                break
            rows += batch.shape[0]
            padded, w = _pad_batch(batch, _bucket(batch.shape[0], None))
            total += float(
                fitting.weighted_inertia(
                    padded,
                    centers,
                    w,
                    metric=self._metric,
                    chunk=self._chunk(padded.shape[0]),
                )
            )
        if not rows:
            # An exhausted iterator must not read as a perfect score of 0.
            raise ValueError(
                "the input is empty: a pass over it gave no rows (a one-shot iterator "
                "allows one pass only)."
            )
        return total

    def score(self, input_fn: Any) -> float:
        """Sum over ALL the input of the distance to the nearest center (squared
        Euclidean, or 1 - cos)."""
        return self._total_distance(input_fn)

    def evaluate(self, input_fn: Any, steps: int | None = None, name: str | None = None):
        """``{"loss", "score", "global_step"}``: loss = score = the summed distance over
        the input (its first `steps` batches if given). Appends the result as a JSON
        line to ``eval_dir(name)/metrics.jsonl``."""
        steps = _check_int(steps, "steps", 1, allow_none=True)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"`name` must be None or a non-empty str without '/'; got {name!r}.")
        total = self._total_distance(input_fn, steps)
        result = {"loss": total, "score": total, "global_step": self.global_step}
        out = pathlib.Path(self.eval_dir(name))
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    # ------------------------------------------------------------------ variables

    def cluster_centers(self) -> np.ndarray:
        """The (k, d) centers."""
        return np.asarray(self._require_fitted().centers)

    def get_variable_names(self) -> list[str]:
        self._require_fitted()
        return sorted(VARIABLES.values())

    def get_variable_value(self, name: str) -> np.ndarray:
        state = self._require_fitted()
        inverse = {v: f for f, v in VARIABLES.items()}
        if name not in inverse:
            raise ValueError(f"`name` must be one of {sorted(inverse)}; got {name!r}.")
        return np.asarray(getattr(state, inverse[name]))

    def latest_checkpoint(self) -> str | None:
        """Path of the newest checkpoint in model_dir (None before the first save)."""
        return _latest_checkpoint_path(self._model_dir)

    def export_saved_model(self, export_dir_base: str | os.PathLike) -> str:
        """Writes a self-contained serving artifact under `export_dir_base`; returns its
        path. Load it with :func:`jaxkmeans.load_exported`."""
        state = self._require_fitted()
        return export_lib.export_model(
            export_dir_base,
            np.asarray(state.centers),
            self._metric,
            {"global_step": self.global_step, "model_dir": self._model_dir},
        )

    def __repr__(self) -> str:
        return (
            f"KMeans(num_clusters={self._num_clusters}, distance_metric={self._metric!r}, "
            f"use_mini_batch={self._use_mini_batch}, model_dir={self._model_dir!r}, "
            f"global_step={self.global_step})"
        )


def _open(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = pathlib.Path(model_dir).expanduser().resolve()
    ckpt = Checkpointer(path)
    try:
        if ckpt.latest_step() is None:
            raise ValueError(f"`model_dir` {str(path)!r} holds no checkpoint.")
        _, values, cfg = ckpt.restore()
    finally:
        ckpt.close()
    return values, cfg


def list_variables(model_dir: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """``(name, shape)`` of every variable in the newest checkpoint of `model_dir`."""
    values, _ = _open(model_dir)
    return sorted((name, list(np.shape(v))) for name, v in values.items())


def load_variable(model_dir: str | os.PathLike, name: str) -> np.ndarray:
    """The value of variable `name` (e.g. ``"clusters"``) in the newest checkpoint."""
    values, _ = _open(model_dir)
    if name not in values:
        raise ValueError(f"`name` must be one of {sorted(values)}; got {name!r}.")
    return np.asarray(values[name])


def latest_checkpoint(model_dir: str | os.PathLike) -> str | None:
    """Path of the newest checkpoint in `model_dir`, or None."""
    return _latest_checkpoint_path(model_dir)


load_exported = export_lib.load_exported
