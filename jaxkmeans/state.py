"""Pytrees carried between calls: KMeansState (mini-batch / estimator state),
FitResult and StepStats."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxkmeans._validation import as_data
from jaxkmeans.updates import MiniBatchOptState, minibatch_optimizer

__all__ = ["KMeansState", "FitResult", "StepStats"]


class StepStats(NamedTuple):
    """What one Lloyd iteration observed.

    Attributes:
      loss: () weighted sum of distances to the nearest center, before the update.
      counts: (k,) weight assigned to each center (before any empty-cluster relocation).
      shift: () total squared movement of the centers, ``sum_j ||new_j - old_j||^2``.

    Examples:
      >>> import jax.numpy as jnp, jaxkmeans
      >>> x = jnp.array([[0.0], [1.0], [10.0], [11.0]])
      >>> new_centers, stats = jaxkmeans.lloyd_step(x, jnp.array([[0.0], [10.0]]))
      >>> float(stats.loss), stats.counts.tolist(), float(stats.shift)
      (2.0, [2.0, 2.0], 0.5)
    """

    loss: jax.Array
    counts: jax.Array
    shift: jax.Array


class FitResult(NamedTuple):
    """Result of :func:`jaxkmeans.fit`.

    Attributes:
      centers: (k, d) final centers.
      labels: (n,) int32 nearest final center of each row.
      loss: () weighted sum of distances of the rows to the final centers (inertia).
      n_iter: () int32 number of Lloyd updates applied.
      converged: () bool, True when the tolerance rule (or a fixed point) stopped the loop
        before ``max_iter``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxkmeans
      >>> x = jnp.array([[0.0], [1.0], [10.0], [11.0]])
      >>> result = jaxkmeans.fit(jax.random.PRNGKey(0), x, 2)
      >>> result._fields
      ('centers', 'labels', 'loss', 'n_iter', 'converged')
      >>> float(result.loss), bool(result.converged)
      (1.0, True)
    """

    centers: jax.Array
    labels: jax.Array
    loss: jax.Array
    n_iter: jax.Array
    converged: jax.Array


@dataclasses.dataclass(frozen=True)
class KMeansState:
    """Everything mini-batch training needs to resume, as a pytree of arrays.

    Attributes:
      centers: (k, d) centers used to assign points (the published model).
      opt_state: the state of :func:`jaxkmeans.minibatch_optimizer` (carried from step to
        step as optax state); ``counts`` reads its cumulative weight per center since
        the last sync, (k,).
      step: () int32 number of updates applied.
      loss: () loss of the last step (before its update).
      key: PRNG key (raw uint32 ``(2,)`` key data) for anything random later on.
      working: (k, d) working copy the updates go to; equal to ``centers`` unless
        ``steps_per_iteration > 1``.
      prev_loss: () loss of the step before (NaN when none), for tolerance checks.
      smoothed_loss: () exponentially weighted per-point loss (NaN before any step).
      origin: (d,) fixed point subtracted from the data before distance expansions and
        sums (accuracy far from the origin); fixed for the life of the state so that a
        converged full-batch model is an exact fixed point.

    Examples:
      A fresh state, one mini-batch step, and the state as a pytree:

      >>> import jax, jax.numpy as jnp, jaxkmeans
      >>> state = jaxkmeans.KMeansState.create(jnp.array([[0.0], [10.0]]))
      >>> int(state.step), state.counts.tolist()
      (0, [0.0, 0.0])
      >>> state, batch_loss = jaxkmeans.minibatch_step(state, jnp.array([[1.0], [9.0]]))
      >>> int(state.step), state.counts.tolist(), state.centers.ravel().tolist()
      (1, [1.0, 1.0], [1.0, 9.0])
      >>> jax.tree_util.tree_map(jnp.shape, state).working
      (2, 1)
    """

    centers: jax.Array
    opt_state: MiniBatchOptState
    step: jax.Array
    loss: jax.Array
    key: jax.Array
    working: jax.Array
    prev_loss: jax.Array
    smoothed_loss: jax.Array
    origin: jax.Array

    @classmethod
    def create(cls, centers: Any, *, key: Any = None, origin: Any = None) -> KMeansState:
        """A fresh state at `centers` with zero counts, step 0 and NaN losses.

        Args:
          centers: (k, d) float array of starting centers.
          key: a PRNG key (typed or raw); default ``jax.random.PRNGKey(0)``.
          origin: (d,) frame origin; default the mean of `centers`.

        Examples:
          >>> import jax.numpy as jnp, jaxkmeans
          >>> state = jaxkmeans.KMeansState.create(jnp.zeros((3, 2)))
          >>> state.centers.shape, int(state.step), bool(jnp.isnan(state.loss))
          ((3, 2), 0, True)
        """
        centers = as_data(centers, "centers")
        if key is None:
            key = jax.random.PRNGKey(0)
        key = jnp.asarray(key)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        nan = jnp.full((), np.nan, centers.dtype)
        return cls(
            centers=centers,
            opt_state=minibatch_optimizer().init(centers),
            step=jnp.zeros((), jnp.int32),
            loss=nan,
            key=key,
            working=centers,
            prev_loss=nan,
            smoothed_loss=nan,
            origin=jnp.mean(centers, axis=0)
            if origin is None
            else jnp.asarray(origin, centers.dtype),
        )

    @property
    def counts(self) -> jax.Array:
        """(k,) cumulative weight per center since the last sync.

        Examples:
          >>> import jax.numpy as jnp, jaxkmeans
          >>> jaxkmeans.KMeansState.create(jnp.zeros((2, 1))).counts.tolist()
          [0.0, 0.0]
        """
        return self.opt_state.counts

    def replace(self, **changes: Any) -> KMeansState:
        """A copy with `changes` (``counts=`` sets the optimizer state's counts).

        Examples:
          >>> import jax.numpy as jnp, jaxkmeans
          >>> state = jaxkmeans.KMeansState.create(jnp.zeros((2, 1)))
          >>> state.replace(counts=jnp.array([3.0, 4.0])).counts.tolist()
          [3.0, 4.0]
        """
        if "counts" in changes:
            changes["opt_state"] = MiniBatchOptState(counts=changes.pop("counts"))
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    KMeansState,
    data_fields=[f.name for f in dataclasses.fields(KMeansState)],
    meta_fields=[],
)
