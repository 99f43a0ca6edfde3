"""Portable serving artifact: a serialized ``jax.export`` of the predict function with
the centers inside, plus a metadata JSON. Loading needs neither the checkpoint nor the
original ``KMeans`` object.

Examples:
  >>> import tempfile, numpy as np, jaxkmeans
  >>> from jaxkmeans import export
  >>> path = export.export_model(tempfile.mkdtemp(), np.array([[0.0], [10.0]]),
  ...                            "squared_euclidean", {})
  >>> sorted(p.name for p in __import__("pathlib").Path(path).iterdir())
  ['metadata.json', 'predict.jaxexport']
  >>> jaxkmeans.load_exported(path)(np.array([[2.0], [7.0]]))["cluster_index"].tolist()
  [0, 1]
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from jaxkmeans import metrics
from jaxkmeans._validation import check_metric
from jaxkmeans.inputs import to_matrix
from jaxkmeans.kernels.xla import block_argmin

__all__ = ["predict_fn", "export_model", "load_exported", "ExportedModel"]

PROGRAM_FILE = "predict.jaxexport"
METADATA_FILE = "metadata.json"
ASSETS_EXTRA_DIR = "assets.extra"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def predict_fn(metric: str) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
    """The pure, jittable ``(centers, x) -> {"cluster_index", "all_distances"}``.

    ``all_distances`` is (n, k): squared Euclidean distances, or 1 - cos for cosine;
    ``cluster_index`` (n,) int32 is the nearest center (lowest index on ties).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkmeans.export import predict_fn
      >>> out = jax.jit(predict_fn("cosine"))(jnp.array([[1.0, 0.0], [0.0, 1.0]]),
      ...                                     jnp.array([[2.0, 0.0], [1.0, 1.0]]))
      >>> out["cluster_index"].tolist()  # ties go to the lowest index
      [0, 0]
      >>> out["all_distances"]  # 1 - cos
      Array([[0.        , 1.        ],
             [0.29289323, 0.29289323]], dtype=float32)
    """
    check_metric(metric)

    def model_fn(
        centers: jax.Array, x: jax.Array, weights: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        # `weights` (n,) marks padding rows (0) so they do not move the frame origin.
        x = jnp.asarray(x, centers.dtype)
        offset = metrics.frame_origin(x, metric, weights)
        cp, bias = metrics.prepare_centers(centers, metric, offset)
        xp, base = metrics.prepare_rows(x, metric, offset)
        score = metrics.score_block(xp, cp, bias, "float32")
        _, idx = block_argmin(score)
        dist = metrics.to_distance(base[:, None], score)
        return {"cluster_index": idx, "all_distances": dist}

    return model_fn


def _unique_dir(base: pathlib.Path) -> pathlib.Path:
    stamp = int(time.time())
    path = base / str(stamp)
    while path.exists():
        stamp += 1
        path = base / str(stamp)
    return path


def _check_assets_extra(assets_extra: Any) -> dict[str, pathlib.Path]:
    """TF's ``assets_extra``: {destination path inside assets.extra: source file}."""
    if assets_extra is None:
        return {}
    if not isinstance(assets_extra, dict):
        raise TypeError(
            "`assets_extra` must be None or a dict {destination path: source file}; "
            f"got {type(assets_extra).__name__}."
        )
    out = {}
    for dest, src in assets_extra.items():
        rel = pathlib.PurePosixPath(str(dest))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(
                f"`assets_extra` destinations must be relative paths inside the export; got "
                f"{dest!r}."
            )
        source = pathlib.Path(src).expanduser()
        if not source.is_file():
            raise ValueError(f"`assets_extra[{dest!r}]` must be an existing file; got {src!r}.")
        out[str(rel)] = source
    return out


def export_model(
    export_dir_base: str | os.PathLike,
    centers: Any,
    metric: str,
    metadata: dict[str, Any],
    assets_extra: dict[str, Any] | None = None,
) -> str:
    """Writes ``export_dir_base/<timestamp>/`` with the program and metadata; returns its
    path. The directory appears whole or not at all (written aside, then renamed).

    ``metadata`` may hold ``"features"``: ``[[name, width], ...]``, the dict features the
    model was trained on (in column order); the loaded predictor then also accepts such a
    dict. ``assets_extra`` (as TensorFlow's): ``{destination: source file}``, copied under
    ``assets.extra/``.

    Examples:
      >>> import tempfile, numpy as np
      >>> from jaxkmeans.export import export_model, load_exported
      >>> path = export_model(tempfile.mkdtemp(), np.array([[0.0, 0.0], [10.0, 10.0]]),
      ...                     "squared_euclidean", {"features": [["a", 1], ["b", 1]]})
      >>> model = load_exported(path)
      >>> model({"a": np.array([1.0, 9.0]), "b": np.array([0.0, 9.0])})["cluster_index"]
      array([0, 1], dtype=int32)
    """
    assets = _check_assets_extra(assets_extra)
    centers = jnp.asarray(np.asarray(centers, np.float32))
    k, d = centers.shape
    fn = predict_fn(metric)
    (batch,) = jax_export.symbolic_shape("batch")
    exported = jax_export.export(jax.jit(lambda x: fn(centers, x)), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((batch, d), jnp.float32)
    )
    base = pathlib.Path(export_dir_base).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    final = _unique_dir(base)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=base))
    try:
        (tmp / PROGRAM_FILE).write_bytes(bytes(exported.serialize()))
        meta = {
            "format": "jaxkmeans-export",
            "version": 1,
            "num_clusters": int(k),
            "dims": int(d),
            "distance_metric": metric,
            "platforms": list(PLATFORMS),
            "jax_version": jax.__version__,
            "outputs": ["cluster_index", "all_distances"],
            **metadata,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for dest, source in assets.items():
            target = tmp / ASSETS_EXTRA_DIR / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)


class ExportedModel:
    """A loaded export: call it on an (n, d) array to get
    ``{"cluster_index": (n,) int32, "all_distances": (n, k) float32}`` (numpy).

    A model trained on dict features also accepts the same dict (feature name -> (n,)
    or (n, d_i) array; extra keys are ignored), or ``(features, None)``; its columns are
    put in the training order (``feature_names``).

    Examples:
      >>> import tempfile, numpy as np, jaxkmeans
      >>> from jaxkmeans.export import export_model
      >>> path = export_model(tempfile.mkdtemp(), np.eye(3), "squared_euclidean", {})
      >>> model = jaxkmeans.load_exported(path)
      >>> model.num_clusters, model.dims, model.metadata["distance_metric"]
      (3, 3, 'squared_euclidean')
      >>> model(np.eye(3)[::-1])["cluster_index"].tolist()
      [2, 1, 0]
    """

    def __init__(self, path: pathlib.Path):
        self.path = str(path)
        self.metadata: dict[str, Any] = json.loads((path / METADATA_FILE).read_text())
        self._exported = jax_export.deserialize(bytearray((path / PROGRAM_FILE).read_bytes()))
        self.num_clusters = int(self.metadata["num_clusters"])
        self.dims = int(self.metadata["dims"])
        features = self.metadata.get("features")
        self.features: list[list[Any]] | None = features
        self.feature_names: list[str] | None = (
            None if features is None else [str(name) for name, _ in features]
        )

    def _from_dict(self, x: Any) -> np.ndarray:
        if self.features is None:
            raise TypeError(
                "`x` must be a numeric (n, d) array: this model was trained on arrays, not "
                f"on dict features; got {type(x).__name__}."
            )
        arr = to_matrix(x, self.feature_names)  # checks the names, types and row counts
        for name, width in self.features:
            got = int(np.prod(np.shape(x[name])[1:], dtype=int))
            if got != width:
                raise ValueError(
                    f"feature {name!r} must have {width} column(s), as in training; got shape "
                    f"{np.shape(x[name])}."
                )
        return arr

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        if isinstance(x, tuple) and len(x) == 2 and x[1] is None:
            x = x[0]  # TensorFlow's (features, labels) with no labels
        if isinstance(x, Mapping):
            x = self._from_dict(x)
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"`x` must be a numeric array; got dtype {arr.dtype}.")
        if arr.ndim != 2 or arr.shape[1] != self.dims:
            raise ValueError(f"`x` must have shape (n, {self.dims}); got {arr.shape}.")
        out = self._exported.call(jnp.asarray(arr, jnp.float32))
        return {key: np.asarray(value) for key, value in out.items()}

    def __repr__(self) -> str:
        return f"ExportedModel(path={self.path!r}, k={self.num_clusters}, d={self.dims})"


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Loads an artifact written by ``KMeans.export_saved_model``.

    Args:
      path: the directory returned by ``export_saved_model`` (or its parent, in which
        case the newest export inside is used).

    Returns:
      A callable ``x -> {"cluster_index", "all_distances"}``.

    Examples:
      >>> import tempfile, numpy as np, jaxkmeans
      >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
      >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
      ...                       initial_clusters=x[[0, 2]]).train(x)
      >>> base = tempfile.mkdtemp()
      >>> path = km.export_saved_model(base)
      >>> predict = jaxkmeans.load_exported(base)  # the newest export under `base`
      >>> predict.path == path
      True
      >>> predict(x)["cluster_index"].tolist()
      [0, 0, 1, 1]
    """
    p = pathlib.Path(path).expanduser().resolve()
    if not (p / METADATA_FILE).is_file() and p.is_dir():
        subs = sorted(
            (s for s in p.iterdir() if (s / METADATA_FILE).is_file() and s.name.isdigit()),
            key=lambda s: int(s.name),
        )
        if subs:
            p = subs[-1]
    if not (p / METADATA_FILE).is_file() or not (p / PROGRAM_FILE).is_file():
        raise ValueError(
            f"`path` must be a directory written by export_saved_model (with {METADATA_FILE} "
            f"and {PROGRAM_FILE}); got {str(path)!r}."
        )
    return ExportedModel(p)
