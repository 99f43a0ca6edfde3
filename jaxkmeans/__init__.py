"""jaxkmeans: k-means clustering in JAX.

A functional core of jit-composable pure functions (``pairwise_distances``, ``assign``,
``inertia``, ``init_centers``, ``lloyd_step``, ``fit``, ``minibatch_step``) under a
TensorFlow-estimator-compatible ``KMeans``.

Examples:
  The functional core, one call:

  >>> import jax, numpy as np, jaxkmeans
  >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
  >>> result = jaxkmeans.fit(jax.random.PRNGKey(0), x, 2)
  >>> sorted(result.centers.tolist()), float(result.loss)
  ([[0.0, 0.5], [10.0, 10.5]], 1.0)

  The TensorFlow-style estimator:

  >>> import tempfile
  >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False, seed=0)
  >>> km = km.train(x, max_steps=5)
  >>> sorted(km.cluster_centers().tolist()), km.score(x)
  ([[0.0, 0.5], [10.0, 10.5]], 1.0)
"""

from jaxkmeans._config import enable_compilation_cache, show_config
from jaxkmeans._validation import COSINE_DISTANCE, SQUARED_EUCLIDEAN_DISTANCE
from jaxkmeans.assignment import assign, auto_chunk_size, inertia
from jaxkmeans.estimator import (
    KMeans,
    NotFittedError,
    RunConfig,
    latest_checkpoint,
    list_variables,
    load_exported,
    load_variable,
)
from jaxkmeans.fitting import fit, lloyd_step, minibatch_step
from jaxkmeans.initializers import (
    KMC2_INIT,
    KMEANS_PARALLEL_INIT,
    KMEANS_PLUS_PLUS_INIT,
    RANDOM_INIT,
    init_centers,
)
from jaxkmeans.metrics import pairwise_distances
from jaxkmeans.state import FitResult, KMeansState, StepStats
from jaxkmeans.updates import minibatch_optimizer

__version__ = "0.1.0"

CLUSTER_CENTERS_VAR_NAME = KMeans.CLUSTER_CENTERS_VAR_NAME
SCORE = KMeans.SCORE
CLUSTER_INDEX = KMeans.CLUSTER_INDEX
ALL_DISTANCES = KMeans.ALL_DISTANCES

__all__ = [
    "SQUARED_EUCLIDEAN_DISTANCE",
    "COSINE_DISTANCE",
    "RANDOM_INIT",
    "KMEANS_PLUS_PLUS_INIT",
    "KMC2_INIT",
    "KMEANS_PARALLEL_INIT",
    "CLUSTER_CENTERS_VAR_NAME",
    "SCORE",
    "CLUSTER_INDEX",
    "ALL_DISTANCES",
    "pairwise_distances",
    "assign",
    "inertia",
    "auto_chunk_size",
    "init_centers",
    "lloyd_step",
    "fit",
    "minibatch_optimizer",
    "minibatch_step",
    "KMeansState",
    "FitResult",
    "StepStats",
    "KMeans",
    "RunConfig",
    "NotFittedError",
    "load_variable",
    "list_variables",
    "latest_checkpoint",
    "load_exported",
    "enable_compilation_cache",
    "show_config",
]
