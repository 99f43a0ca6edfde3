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

from jaxkmeans import engine, fitting, initializers, metrics, sharding
from jaxkmeans import export as export_lib
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    check_bool,
    check_int,
    check_mesh,
    check_metric,
    check_non_negative,
    check_positive_int,
    count_distinct,
)
from jaxkmeans.assignment import inertia_impl
from jaxkmeans.checkpoint import CheckpointStore
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
_MAX_UNTIL_CONVERGED_STEPS = 10_000
# Steps of loss history kept (in memory and in every checkpoint's config): bounded, so
# that saves do not grow with the length of the run.
_HISTORY_KEPT = 1000
_FORMAT = "jaxkmeans-estimator"
_EMPTY_INPUT = "the input is empty: a pass over it gave no rows."


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
        # A ValueError for any bad value (bools and non-ints included), as TF's RunConfig.
        for name in ("save_checkpoints_steps", "keep_checkpoint_max"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be None or an int >= 1; got {value!r}.")
        self.chunk_size = check_positive_int(self.chunk_size, "chunk_size", allow_none=True)
        self.mesh = check_mesh(self.mesh)


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
        )


# ---------------------------------------------------------------------- batches


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


def _place(batch: np.ndarray, standard: int | None, mesh: Any, dims: int) -> tuple[Any, Any, int]:
    """Pads a batch to its bucket size with zero-weight rows and puts it on the
    device(s); returns ``(x, w, real rows over all processes)``."""
    b = batch.shape[0]
    if b == 0:
        padded, w = np.zeros((1, dims), np.float32), np.zeros((1,), np.float32)
    else:
        padded, w = _pad_batch(batch, _bucket(b, standard))
    if mesh is None:
        return jnp.asarray(padded), jnp.asarray(w), b
    return sharding.shard_rows(padded, w, mesh, valid=b)


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


def _centers_from_method(settings: _Settings, it: Iterator, seen: list, key: jax.Array):
    k, metric = settings.num_clusters, settings.metric
    sample = None
    for batch in it:
        seen.append(batch)
        sample = np.concatenate(seen) if len(seen) > 1 else batch
        if sample.shape[0] >= k and count_distinct(sample, metric, at_least=k) >= k:
            break
    if sample is None:
        raise ValueError("the input is empty: train() needs at least one row.")
    distinct = count_distinct(sample, metric, at_least=k)
    if distinct < k:
        what = "distinct non-zero directions" if metric == COSINE_DISTANCE else "distinct points"
        raise ValueError(
            f"num_clusters={k} is more than the input's {distinct} {what}; "
            "k-means needs at least num_clusters of them."
        )
    spec = initializers.make_init(settings.init, k, metric, settings.num_retries)
    return initializers.init_impl(key, jnp.asarray(sample), None, spec)


@jax.jit
def _sample_origin(sample: jax.Array) -> jax.Array:
    """The frame origin of the first rows, in one fused pass (run op by op it made
    temporaries the size of the sample, a peak of memory on big first batches)."""
    return metrics.frame_origin(sample, SQUARED_EUCLIDEAN_DISTANCE)


def _initial_state(
    settings: _Settings, reader: InputReader, seed: int
) -> tuple[KMeansState, Iterator[np.ndarray]]:
    """The state made from the first batches; returns it and the first pass's batches
    (the ones used for initialization included: they are not used up)."""
    it = reader.batches()
    seen: list[np.ndarray] = []
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    if settings.init_array is not None:
        centers = _centers_from_array(settings.init_array, it, seen, reader)
    elif callable(settings.init):
        centers = _centers_from_callable(settings.init, settings.num_clusters, it, seen)
    else:
        centers = _centers_from_method(settings, it, seen, init_key)
    centers = jnp.asarray(centers, jnp.float32)
    if settings.metric == COSINE_DISTANCE:
        centers = metrics.normalize_rows(centers)
    mesh = settings.mesh
    if mesh is not None:  # every process starts from process 0's centers
        centers = jnp.asarray(sharding.broadcast_from_first(centers))
    # The frame origin (fixed for the life of the model) comes from the rows seen so
    # far (as fit's from all rows), so distances stay accurate even if a center is
    # far from the data, and exact ties stay exact on integer data.
    sample = np.concatenate(seen) if seen else np.asarray(centers)
    origin = np.asarray(_sample_origin(jnp.asarray(sample)))
    if mesh is not None:
        origin = sharding.broadcast_from_first(origin)
    state = _replicated(KMeansState.create(centers, key=key, origin=origin), mesh)
    del sample
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


class _Trainer:
    """One ``train()`` call: the steps over `reader`, updating `run` in place.

    `save` writes a checkpoint of `run` (at the end, and every save_checkpoints_steps).
    """

    def __init__(
        self, settings: _Settings, run: _Run, reader: InputReader, save: Callable[[], None]
    ):
        self.settings = settings
        self.run = run
        self.reader = reader
        self._save = save
        self.step = run.global_step  # a host int: no device read per step

    def train(self, steps: int | None, max_steps: int | None, seed: int) -> None:
        start = self.step
        first_pass = None
        if self.run.state is None:
            self.run.state, first_pass = _initial_state(self.settings, self.reader, seed)
            self.run.dims = self.reader.dims
        target = start + steps if steps is not None else max_steps
        tol = self.settings.relative_tolerance
        until_converged = target is None and tol is not None
        if until_converged:
            target = start + _MAX_UNTIL_CONVERGED_STEPS
        if self.settings.use_mini_batch:
            stopped = self._train_minibatch(first_pass, target)
        else:
            stopped = self._train_full(first_pass, target)
        if until_converged and not stopped and self.run.global_step >= target:
            warnings.warn(
                f"relative_tolerance={tol} was not reached in "
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
        history = self.run.history
        history.append([self.step, reported])
        if len(history) > 2 * _HISTORY_KEPT:
            del history[:-_HISTORY_KEPT]
        every = self.settings.run_config.save_checkpoints_steps
        if every is not None and self.step % every == 0:
            self._save()
        return _tolerance_reached(self.settings.relative_tolerance, loss, prev)

    # -------------------------------------------------------------- full batch

    def _train_full(self, first_pass: Iterator | None, target: int | None) -> bool:
        one_pass = target is None
        while one_pass or self.step < target:
            batches = first_pass if first_pass is not None else self.reader.batches()
            first_pass = None
            loss, prev = self._lloyd_pass(batches)
            if self._after_step(loss, prev, loss):
                return True
            if one_pass:
                return False
        return False

    def _lloyd_pass(self, batches: Iterator[np.ndarray]) -> tuple[float, float]:
        """One exact Lloyd iteration over one pass; returns (its loss, the previous)."""
        settings, run = self.settings, self.run
        state = run.state
        acc = None
        standard = None
        rows = 0
        pending: list[Any] = []
        for batch in _synced(batches, settings.mesh, run.dims):
            standard = standard or batch.shape[0] or None
            x, w, b = _place(batch, standard, settings.mesh, run.dims)
            # What is alive stays a few batches whatever the input's size: the host
            # batch is let go of before the next one is read, and (each pass_add
            # needing the previous one's result, so they run one after another) the
            # previous computation is waited for once this one is dispatched: this one
            # computes while the next batch is read, and only its batch and the one
            # being read are held.
            del batch
            rows += b
            acc = fitting.pass_add(acc, state.centers, state.origin, x, w, settings.spec)
            del x, w
            _bounded(pending, acc.loss, depth=1)
        if acc is None or rows == 0:
            raise ValueError(_EMPTY_INPUT)
        run.rows_per_pass = rows
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
        run.state = _replicated(new_state, settings.mesh)
        self.step += 1
        return loss, prev

    # -------------------------------------------------------------- mini-batch

    def _train_minibatch(self, first_pass: Iterator | None, target: int | None) -> bool:
        run, reader = self.run, self.reader
        batches = first_pass if first_pass is not None else reader.batches()
        # Continue the pass an earlier train() (or the run a checkpoint came from) left
        # unfinished: skip the batches it already used. A one-shot iterator passed
        # directly is already past them.
        skip = 0 if reader.one_shot else run.pass_position
        if reader.one_shot:
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
        for batch in _synced(batches, self.settings.mesh, run.dims):
            got_any = True
            standard = standard or batch.shape[0] or None
            if skip:
                skip -= 1
                rows += batch.shape[0]
                continue
            trained = True
            b, stop = self._minibatch_step(batch, standard, rows, pending)
            rows += b
            if stop:
                return True, trained
            if target is not None and self.step >= target:
                return False, trained
        if not got_any:
            raise ValueError(_EMPTY_INPUT)
        run.rows_per_pass = rows
        run.pass_position = 0
        return None, trained

    def _minibatch_step(
        self, batch: np.ndarray, standard: int | None, rows_before: int, pending: list
    ) -> tuple[int, bool]:
        """One update on one batch; returns (its real rows, whether to stop)."""
        settings, run = self.settings, self.run
        x, w, b = _place(batch, standard, settings.mesh, run.dims)
        n_pass = run.rows_per_pass or (rows_before + b)
        alpha = min(1.0, 2.0 * b / (n_pass + 1))
        state, loss = fitting.minibatch_impl(
            run.state, x, w, alpha, settings.spec, settings.steps_per_iteration
        )
        run.state = state
        self.step += 1
        run.pass_position += 1
        _bounded(pending, state.step)
        return b, self._after_step(state.smoothed_loss, state.prev_loss, loss / b)


# ---------------------------------------------------------------------- inference


def _predict_batches(
    reader: InputReader, centers: np.ndarray, predict: Callable
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    for batch in reader.batches():
        b = batch.shape[0]
        padded, w = _pad_batch(batch, _bucket(b, None))
        out = predict(centers, padded, w)
        yield batch, {k: np.asarray(v)[:b] for k, v in out.items()}


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


def _total_distance(
    reader: InputReader, centers: np.ndarray, spec: engine.Pass, steps: int | None
) -> float:
    total = 0.0
    rows = 0
    for i, batch in enumerate(reader.batches()):
        if steps is not None and i >= steps:
            break
        rows += batch.shape[0]
        padded, w = _pad_batch(batch, _bucket(batch.shape[0], None))
        total += float(inertia_impl(padded, centers, w, spec))
    if not rows:
        # An exhausted iterator must not read as a perfect score of 0.
        raise ValueError(
            "the input is empty: a pass over it gave no rows (a one-shot iterator "
            "allows one pass only)."
        )
    return total


# ---------------------------------------------------------------------- the front


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
        k = check_positive_int(num_clusters, "num_clusters")
        metric = check_metric(distance_metric, "distance_metric")
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
        if model_dir is None:
            model_dir = tempfile.mkdtemp(prefix="jaxkmeans-")
        self._store = CheckpointStore(model_dir, max_to_keep=config.keep_checkpoint_max)
        self._seed = seed
        self._run = _Run(dims=None if init_array is None else int(init_array.shape[1]))
        self._restore()
        if self._seed is None:
            self._seed = secrets.randbits(31)
        self._store.remember(self._run.copy())

    def _restore(self) -> None:
        """Takes the newest checkpoint of model_dir, if any (checked against self)."""
        s, dims = self._settings, self._run.dims
        values = self._store.load(
            _FORMAT,
            "KMeans",
            {
                "num_clusters": (s.num_clusters, f"asked {s.num_clusters}"),
                "distance_metric": (s.metric, f"asked {s.metric!r}"),
                "dims": (dims, f"initial_clusters has {dims}"),
            },
            lambda cfg: _state_template(cfg["num_clusters"], cfg["dims"]),
        )
        if values is not None:
            cfg = self._store.config
            self._run = _Run.from_checkpoint(values, cfg, s.mesh)
            if self._seed is None:
                self._seed = cfg.get("seed")

    def _save(self) -> None:
        run = self._run
        config = run.config_json(self._settings, self._seed)
        self._store.save(int(run.state.step), _state_to_dict(run.state), config, run.copy())

    # ------------------------------------------------------------------ properties

    @property
    def model_dir(self) -> str:
        """Absolute path of the checkpoint directory."""
        return self._store.directory

    @property
    def config(self) -> RunConfig:
        return self._settings.run_config

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's hyperparameters."""
        return self._settings.params(self._seed)

    @property
    def model_fn(self) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
        """The pure, jittable ``(centers, x) -> {"cluster_index", "all_distances"}``."""
        return export_lib.predict_fn(self._settings.metric)

    @property
    def global_step(self) -> int:
        """Number of updates applied so far (0 before training)."""
        return self._run.global_step

    @property
    def loss_history(self) -> list[tuple[int, float]]:
        """``(global_step, loss)`` of the last (up to 1000) training steps (full batch: the
        pass loss; mini-batch: the batch loss per point)."""
        return [(s, v) for s, v in self._run.settled_history()]

    def eval_dir(self, name: str | None = None) -> str:
        """``model_dir/eval`` or ``model_dir/eval_<name>``: where evaluate() logs."""
        return os.path.join(self.model_dir, "eval" if not name else f"eval_{name}")

    # ------------------------------------------------------------------ training

    def _reader(self, input_fn: Any) -> InputReader:
        return InputReader(input_fn, self._settings.feature_names, self._run.dims)

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
        steps = check_positive_int(steps, "steps", allow_none=True)
        max_steps = check_positive_int(max_steps, "max_steps", allow_none=True)
        if steps is not None and max_steps is not None:
            raise ValueError(
                f"give `steps` or `max_steps`, not both; got steps={steps}, max_steps={max_steps}."
            )
        if max_steps is not None and self.global_step >= max_steps:
            return self
        reader = self._reader(input_fn)
        try:
            _Trainer(self._settings, self._run, reader, self._save).train(
                steps, max_steps, self._seed
            )
        except BaseException:
            self._run = self._store.saved.copy()
            raise
        return self

    # ------------------------------------------------------------------ inference

    def _require_fitted(self) -> KMeansState:
        if self._run.state is None:
            raise NotFittedError(
                "this KMeans is not trained yet (no checkpoint in model_dir "
                f"{self.model_dir!r}); call train() first."
            )
        return self._run.state

    def _predict_batches(self, input_fn: Any) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        centers = np.asarray(self._require_fitted().centers)  # inference is per process
        reader = self._reader(input_fn)
        return _predict_batches(reader, centers, _jitted_predict(self._settings.metric))

    def predict(
        self,
        input_fn: Any,
        predict_keys: str | list[str] | None = None,
        yield_single_examples: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Yields ``{"cluster_index": int, "all_distances": float32[k]}`` per example
        (or per batch with ``yield_single_examples=False``); ``all_distances`` are squared
        Euclidean distances (or 1 - cos)."""
        keys = _check_predict_keys(predict_keys)
        return _predictions(self._predict_batches(input_fn), keys, yield_single_examples)

    def predict_cluster_index(self, input_fn: Any) -> Iterator[int]:
        """Yields the nearest center's index for every example."""
        batches = self._predict_batches(input_fn)
        return (int(i) for _, out in batches for i in out[CLUSTER_INDEX])

    def transform(self, input_fn: Any) -> Iterator[np.ndarray]:
        """Yields every example's distances to all centers: Euclidean (square root of the
        squared distance, clamped at 0) or 1 - cos for cosine."""
        cosine = self._settings.metric == COSINE_DISTANCE
        return _distances(self._predict_batches(input_fn), cosine)

    def _total_distance(self, input_fn: Any, steps: int | None = None) -> float:
        centers = np.asarray(self._require_fitted().centers)
        reader = self._reader(input_fn)
        return _total_distance(reader, centers, self._settings.local_spec, steps)

    def score(self, input_fn: Any) -> float:
        """Sum over ALL the input of the distance to the nearest center (squared
        Euclidean, or 1 - cos)."""
        return self._total_distance(input_fn)

    def evaluate(self, input_fn: Any, steps: int | None = None, name: str | None = None):
        """``{"loss", "score", "global_step"}``: loss = score = the summed distance over
        the input (its first `steps` batches if given). Appends the result as a JSON
        line to ``eval_dir(name)/metrics.jsonl``."""
        steps = check_positive_int(steps, "steps", allow_none=True)
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
        return _latest_checkpoint_path(self.model_dir)

    def export_saved_model(self, export_dir_base: str | os.PathLike) -> str:
        """Writes a self-contained serving artifact under `export_dir_base`; returns its
        path. Load it with :func:`jaxkmeans.load_exported`."""
        state = self._require_fitted()
        return export_lib.export_model(
            export_dir_base,
            np.asarray(state.centers),
            self._settings.metric,
            {"global_step": self.global_step, "model_dir": self.model_dir},
        )

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"KMeans(num_clusters={s.num_clusters}, distance_metric={s.metric!r}, "
            f"use_mini_batch={s.use_mini_batch}, model_dir={self.model_dir!r}, "
            f"global_step={self.global_step})"
        )


def _open(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    store = CheckpointStore(model_dir)
    try:
        if store.config is None:
            raise ValueError(f"`model_dir` {store.directory!r} holds no checkpoint.")
        return store.state(), store.config
    finally:
        store.close()


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
