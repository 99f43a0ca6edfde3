"""The ``jaxkmeans`` command line (also ``python -m jaxkmeans``).

::

    jaxkmeans fit DATA --num-clusters K --model-dir DIR [--metric cosine] [--init NAME]
                  [--mini-batch --batch-size B] [--max-steps N] [--tolerance T] [--seed S]
    jaxkmeans predict DATA --model-dir DIR [--output FILE]
    jaxkmeans info --model-dir DIR
    jaxkmeans export --model-dir DIR --output DIR
    jaxkmeans plot --model-dir DIR DATA --output FILE.png
    jaxkmeans show-config

DATA is a ``.npy`` file (read memory-mapped) or a ``.csv`` / ``.txt`` file of numbers,
comma or whitespace separated; a header row is detected and skipped, ``#`` lines are
comments. A 1-D array or a single column is one feature per row.

``fit`` and ``export`` print a one-line JSON summary on stdout, ``info`` a JSON object;
training progress goes to stderr. Every error is one line on stderr
(``jaxkmeans: error: ...``) and a non-zero exit: 2 for a bad command line, 1 otherwise.

Names used in every output (fit summary, ``info``, progress):

- ``loss``: the sum, over the rows of one training step, of the distance of each row
  to its nearest center (before the step's update). Full batch: over all the rows;
  mini-batch: over the step's batch.
- ``mean_loss``: ``loss`` divided by the rows of that step (only ever under this name).
- ``score``: the sum over all the given rows of the distance to the nearest final center.

Distances are squared Euclidean, or 1 - cos for ``--metric cosine``.

``fit`` saves a checkpoint every 600 seconds of training (``--save-every-secs``,
``--save-every-steps``) and at the end. Ctrl-C (SIGINT) or SIGTERM saves the last
completed step, says so on stderr and exits with status 130; the same command resumes.
On a ``--model-dir`` with a checkpoint, ``fit`` resumes: what defines the model
(--num-clusters, --metric, the width of DATA, --mini-batch or not) must match it, and
start-only settings (--init, --seed) are ignored with a warning.

With ``JAXKMEANS_COMPILATION_CACHE=1``, compiled programs are kept in JAX's persistent
compilation cache in ``$XDG_CACHE_HOME/jaxkmeans/jax-compilation-cache`` (``~/.cache/...``),
so a second run skips compiling; a cache the user configured for JAX
(``JAX_COMPILATION_CACHE_DIR``) is used as it is. ``show-config``
prints versions, devices, the native kernel's status and the cache in use.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import pathlib
import secrets
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import jax
import numpy as np

import jaxkmeans
from jaxkmeans import _config
from jaxkmeans.checkpoint import Checkpointer
from jaxkmeans.initializers import INIT_METHODS

__all__ = ["main", "load_data", "CommandError"]

PROG = "jaxkmeans"
METRICS = (jaxkmeans.SQUARED_EUCLIDEAN_DISTANCE, jaxkmeans.COSINE_DISTANCE)
DATA_SUFFIXES = (".npy", ".csv", ".txt")
# Rows per batch when predicting or scoring (bounds host and device memory).
PREDICT_BATCH = 65_536
DEFAULT_FULL_BATCH_STEPS = 300
DEFAULT_MINI_BATCH_PASSES = 100
DEFAULT_BATCH_SIZE = 1024
DEFAULT_TOLERANCE = 1e-4
# k-means++ extra candidates per pick: the estimator's default.
DEFAULT_NUM_RETRIES = 2
# Points drawn by `plot` (a fixed random subset beyond this).
PLOT_MAX_POINTS = 20_000
PLOT_SIZE_INCHES = (11.0, 4.5)
PLOT_DPI = 100
# Full batch with --batch-size: the sampling inits draw from a uniform random sample of
# this many rows of the whole file (not from the first batch only).
INIT_SAMPLE_MIN_ROWS = 10_000
INIT_SAMPLE_ROWS_PER_CLUSTER = 100
# `info`: loss history entries shown (all with --history).
INFO_HISTORY = 10
# What the CLI remembers about how it started a model (beside the checkpoints): the init
# method when it passed centers computed from a sample of the file.
CLI_STATE_FILE = "jaxkmeans_cli.json"


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# --------------------------------------------------------------------------- data


def load_data(path: str | os.PathLike, what: str = "DATA") -> np.ndarray:
    """Reads a data file as an ``(n, d)`` numeric array.

    Args:
      path: a ``.npy`` file (memory-mapped, not read yet), or a ``.csv`` / ``.txt`` file
        of numbers separated by commas or whitespace (a non-numeric first row is a
        header and skipped; lines starting with ``#`` are comments).
      what: how error messages name the file.

    Returns:
      (n_samples, n_features) array: float32 for text, the stored dtype for ``.npy``.

    Raises:
      CommandError: missing or unreadable file, unknown suffix, non-numeric values,
        rows of different lengths, no rows, more than 2 dimensions.
    """
    p = pathlib.Path(path).expanduser()
    name = f"{what} {str(path)!r}"
    if not p.exists():
        raise CommandError(f"{name} does not exist.")
    if p.is_dir():
        raise CommandError(f"{name} is a directory; expected a .npy, .csv or .txt file.")
    suffix = p.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise CommandError(
            f"{name} must be a .npy, .csv or .txt file; got suffix {suffix or '(none)'!r}."
        )
    arr = _load_npy(p, name) if suffix == ".npy" else _load_text(p, name)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise CommandError(f"{name} must be 2-D (rows x features); got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CommandError(f"{name} has no data; got shape {arr.shape}.")
    return arr


def _load_npy(p: pathlib.Path, name: str) -> np.ndarray:
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise CommandError(f"{name} is not a readable .npy array: {_one_line(e)}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise CommandError(f"{name} must hold numbers; got dtype {dtype}.")
    return arr


def _load_text(p: pathlib.Path, name: str) -> np.ndarray:
    try:
        with open(p, encoding="utf-8") as f:
            skip, first = _find_header(f)
    except UnicodeDecodeError:
        raise CommandError(f"{name} is not a text file of numbers.") from None
    if first is None:
        raise CommandError(f"{name} has no data rows.")
    delimiter = "," if "," in first else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            arr = np.loadtxt(
                p, dtype=np.float32, delimiter=delimiter, skiprows=skip, comments="#", ndmin=2
            )
    except ValueError:
        _explain_bad_text(p, name, skip, delimiter)
        raise CommandError(f"{name} could not be read as numbers.") from None
    if arr.shape[0] == 0:
        raise CommandError(f"{name} has no data rows.")
    return arr


def _find_header(f: TextIO) -> tuple[int, str | None]:
    """Lines to skip (up to and including a header row) and the first data line."""
    header_seen = False
    skip = 0
    for number, line in enumerate(f, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if _parse_row(text, "," if "," in text else None) is None and not header_seen:
            header_seen = True
            skip = number
            continue
        return skip, text
    return skip, None


def _parse_row(text: str, delimiter: str | None) -> list[float] | None:
    try:
        return [float(t) for t in text.split(delimiter)]
    except ValueError:
        return None


def _explain_bad_text(p: pathlib.Path, name: str, skip: int, delimiter: str | None) -> None:
    """Raises a CommandError naming the first bad line (numpy's message is vaguer)."""
    width = None
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if number <= skip or not text:
                continue
            tokens = text.split(delimiter)
            for column, token in enumerate(tokens, start=1):
                try:
                    float(token)
                except ValueError:
                    raise CommandError(
                        f"{name} line {number}, column {column}: {token.strip()[:40]!r} is not "
                        "a number."
                    ) from None
            if width is None:
                width = (len(tokens), number)
            elif len(tokens) != width[0]:
                raise CommandError(
                    f"{name} line {number} has {len(tokens)} values; expected {width[0]} "
                    f"(as on line {width[1]})."
                )


def _batches(
    data: np.ndarray,
    name: str,
    batch_size: int | None,
    order: np.ndarray | None = None,
    before_batch: Callable[[], None] | None = None,
) -> Callable[[], Iterator[np.ndarray]]:
    """An input_fn: every call gives a fresh generator over float32 batches of `data`.

    `order` (a permutation of the rows) is applied batch by batch; `before_batch` runs
    before each batch is handed over (progress reporting).
    """
    n = data.shape[0]
    size = n if batch_size is None else batch_size

    def input_fn() -> Iterator[np.ndarray]:
        for start in range(0, n, size):
            if before_batch is not None:
                before_batch()
            if order is None:
                rows = np.arange(start, min(start + size, n))
                batch = data[start : start + size]
            else:
                rows = np.sort(order[start : start + size])
                batch = data[rows]
            batch = np.asarray(batch, dtype=np.float32)
            finite = np.isfinite(batch).all(axis=1)
            if not finite.all():
                row = int(rows[np.argmin(finite)]) + 1
                raise CommandError(f"{name} has NaN or inf values (data row {row}).")
            yield batch

    return input_fn


def _check_width(data: np.ndarray, name: str, dims: int, model_dir: str) -> None:
    if data.shape[1] != dims:
        raise CommandError(
            f"{name} has {data.shape[1]} columns but the model in {model_dir!r} has "
            f"{dims} features."
        )


# --------------------------------------------------------------------------- model


def _saved_config(model_dir: str) -> dict[str, Any] | None:
    """The config of the newest checkpoint in `model_dir` (None: no checkpoint)."""
    path = pathlib.Path(model_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise CommandError(f"--model-dir {model_dir!r} is not a directory.")
    if not path.exists():
        return None
    ckpt = Checkpointer(path, max_to_keep=None)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        config = ckpt.read_config()
    finally:
        ckpt.close()
    if config.get("format") != "jaxkmeans-estimator":
        raise CommandError(f"--model-dir {model_dir!r} does not hold a jaxkmeans.KMeans model.")
    return config


def _saved_step(model_dir: str) -> int | None:
    ckpt = Checkpointer(pathlib.Path(model_dir).expanduser(), max_to_keep=None)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _open_model(model_dir: str) -> tuple[jaxkmeans.KMeans, dict[str, Any]]:
    """The trained KMeans in `model_dir` and its checkpoint config."""
    path = pathlib.Path(model_dir).expanduser()
    if not path.exists():
        raise CommandError(f"--model-dir {model_dir!r} does not exist.")
    config = _saved_config(model_dir)
    if config is None:
        raise CommandError(
            f"--model-dir {model_dir!r} holds no checkpoint; train one with "
            f"`{PROG} fit DATA --num-clusters K --model-dir DIR`."
        )
    model = _resumed_model(
        num_clusters=config["num_clusters"],
        model_dir=path,
        distance_metric=config["distance_metric"],
        use_mini_batch=bool(config.get("use_mini_batch", True)),
        seed=config.get("seed"),
    )
    return model, config


def _resumed_model(resuming: bool = True, **kwargs: Any) -> jaxkmeans.KMeans:
    """KMeans(**kwargs) without the estimator's warnings about start-only settings
    (init, seed) that differ on resume: the CLI reports those itself, naming its own
    options. Other warnings are shown."""
    if not resuming:
        return jaxkmeans.KMeans(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = jaxkmeans.KMeans(**kwargs)
    for w in caught:
        text = str(w.message)
        if "initial_clusters" in text or "seed" in text:
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return model


def _cli_state(model_dir: str) -> dict[str, Any]:
    try:
        with open(pathlib.Path(model_dir).expanduser() / CLI_STATE_FILE) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cli_state(model_dir: str, state: dict[str, Any]) -> None:
    path = pathlib.Path(model_dir).expanduser() / CLI_STATE_FILE
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    except OSError:  # only a nicety for later resumes
        pass


def _mode(mini_batch: bool) -> str:
    return "mini_batch" if mini_batch else "full_batch"


def _losses(model: jaxkmeans.KMeans, mini_batch: bool, rows: int | None) -> dict[str, float]:
    """``loss`` (sum over the last step's rows) and ``mean_loss`` (per row of it)."""
    if not model.global_step:
        return {}
    loss = float(model.get_variable_value("loss"))
    out = {"loss": loss}
    if mini_batch:
        # The estimator's history holds each mini-batch step's loss per row of its batch.
        history = model.loss_history
        if history and history[-1][0] == model.global_step:
            out["mean_loss"] = float(history[-1][1])
    elif rows:
        out["mean_loss"] = loss / rows
    return out


def _converged(model: jaxkmeans.KMeans, mini_batch: bool, tolerance: float) -> float | None:
    """The last step's relative loss change when it is below `tolerance` (the rule the
    estimator stops on: the pass loss in full batch, the smoothed per-row batch loss in
    mini-batch), else None."""
    if tolerance <= 0 or not model.global_step:
        return None
    try:
        loss = float(model.get_variable_value("smoothed_loss" if mini_batch else "loss"))
        prev = float(model.get_variable_value("prev_loss"))
    except ValueError:  # an estimator without these variables: use the history
        history = model.loss_history
        if mini_batch or len(history) < 2:
            return None
        prev, loss = history[-2][1], history[-1][1]
    if not (math.isfinite(loss) and math.isfinite(prev)):
        return None
    change = abs(prev - loss) / (1.0 + abs(prev))
    return change if change < tolerance else None


def _predict_labels(model: jaxkmeans.KMeans, data: np.ndarray, name: str) -> np.ndarray:
    out = model.predict(
        _batches(data, name, PREDICT_BATCH),
        predict_keys=jaxkmeans.CLUSTER_INDEX,
        yield_single_examples=False,
    )
    return np.concatenate([o[jaxkmeans.CLUSTER_INDEX] for o in out]).astype(np.int32)


# --------------------------------------------------------------------------- progress


class _Progress:
    """Training progress: remembers the last completed step seen, and draws a one-line
    bar on stderr (redrawn in place with carriage returns) when enabled.

    `update` is called before every batch; it reads the step and the loss (see the module
    docstring) from the estimator at most every `interval` seconds (reading waits for the
    device, so not on every step: a train() hook would read every step's loss).
    """

    def __init__(
        self,
        model: jaxkmeans.KMeans,
        target: int,
        stream: TextIO,
        enabled: bool,
        interval: float = 0.1,
    ):
        self._model = model
        self._start = model.global_step
        self.last_step = self._start  # the last completed step seen
        self._target = target
        self._stream = stream
        self._enabled = enabled and target - self._start > 1
        self._interval = interval
        self._t0 = time.monotonic()
        self._last = -math.inf
        self._width = 0

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not force and now - self._last < self._interval):
            return
        self._last = now
        step = self._model.global_step
        self.last_step = max(self.last_step, step)
        loss = "-"
        if step > self._start:
            loss = f"{float(self._model.get_variable_value('loss')):.6g}"
        done = min(1.0, (step - self._start) / max(1, self._target - self._start))
        bar = "#" * round(20 * done)
        line = f"[{bar:<20}] step {step}/{self._target}  loss {loss}  {now - self._t0:.1f}s"
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def close(self, redraw: bool = True) -> None:
        if self._enabled and self._width:
            if redraw:
                self.update(force=True)
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def _accepts(func: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _run_config(args: argparse.Namespace) -> jaxkmeans.RunConfig:
    """RunConfig from the save options (TF's default: every 600 s)."""
    if args.save_every_steps is not None:
        return jaxkmeans.RunConfig(save_checkpoints_steps=args.save_every_steps)
    if args.save_every_secs is not None:
        if not _accepts(jaxkmeans.RunConfig, "save_checkpoints_secs"):
            raise CommandError(
                "--save-every-secs needs a jaxkmeans.RunConfig with save_checkpoints_secs."
            )
        return jaxkmeans.RunConfig(save_checkpoints_secs=args.save_every_secs)
    return jaxkmeans.RunConfig()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_message(model_dir: str, reached: int, start: int) -> str:
    """What an interrupted fit left in `model_dir`, as one line."""
    saved = _saved_step(model_dir)
    where = str(pathlib.Path(model_dir).expanduser().resolve())
    if saved is None:
        return f"{PROG}: interrupted before the first step completed; nothing saved in {where}."
    if saved >= reached:
        return (
            f"{PROG}: interrupted at step {saved}; saved step {saved} to {where} "
            "(resume with the same command)"
        )
    lost = f"steps {saved + 1}-{reached} were not saved" if saved > start else "nothing new saved"
    return (
        f"{PROG}: interrupted at step {reached}; {where} holds step {saved} ({lost}; "
        "resume with the same command)"
    )


# --------------------------------------------------------------------------- commands


def _warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _check_resume(
    args: argparse.Namespace, config: dict[str, Any], dims: int, name: str
) -> tuple[str, int | None]:
    """Checks a fit on an existing model; returns the init and seed it resumes with.

    What defines the model must match (a one-line CommandError otherwise); start-only
    settings given differently are reported as ignored.
    """
    where = f"the model in {args.model_dir!r}"
    fix = "to resume it, or a new --model-dir to start another"
    k = int(config["num_clusters"])
    if args.num_clusters != k:
        raise CommandError(
            f"--num-clusters {args.num_clusters} does not fit {where}, which has "
            f"{k} clusters; use --num-clusters {k} {fix}."
        )
    metric = config["distance_metric"]
    if args.metric != metric:
        raise CommandError(
            f"--metric {args.metric} does not fit {where}, trained with --metric {metric}; "
            f"use --metric {metric} {fix}."
        )
    if int(config["dims"]) != dims:
        raise CommandError(
            f"{name} has {dims} columns but {where} has {config['dims']} features; "
            "use data of that width, or a new --model-dir."
        )
    mini_batch = bool(config.get("use_mini_batch", True))
    if args.mini_batch != mini_batch:
        if args.mini_batch:
            raise CommandError(
                f"--mini-batch does not fit {where}, trained full batch; drop --mini-batch {fix}."
            )
        raise CommandError(
            f"{where} was trained with --mini-batch; add --mini-batch {fix} (full batch "
            "would mix two kinds of steps in one model)."
        )
    step = config.get("global_step")
    at = f"{where} resumes" if step is None else f"{where} resumes at step {step}"
    init = _cli_state(args.model_dir).get("initial_clusters", config.get("initial_clusters"))
    if args.init is not None and args.init != init:
        started = f"was started with --init {init}" if init in INIT_METHODS else "keeps its centers"
        _warn(
            f"--init {args.init} IGNORED: {at}; it {started} (the init only matters when a "
            "model starts; use a new --model-dir to start another)."
        )
    seed = config.get("seed")
    if args.seed is not None and args.seed != seed:
        _warn(
            f"--seed {args.seed} IGNORED: {at} and keeps its seed {seed} (the seed only "
            "matters when a model starts; use a new --model-dir to start another)."
        )
    return (init if init in INIT_METHODS else jaxkmeans.KMEANS_PLUS_PLUS_INIT), seed


def _sample_init(
    data: np.ndarray, name: str, k: int, init: str, metric: str, seed: int
) -> tuple[np.ndarray, int]:
    """Initial centers by `init` from a uniform random sample of all the rows (seeded),
    and the sample's size."""
    n = data.shape[0]
    m = min(n, max(INIT_SAMPLE_MIN_ROWS, INIT_SAMPLE_ROWS_PER_CLUSTER * k))
    rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    sample = np.asarray(data[rows], dtype=np.float32)
    finite = np.isfinite(sample).all(axis=1)
    if not finite.all():
        row = int(rows[np.argmin(finite)]) + 1
        raise CommandError(f"{name} has NaN or inf values (data row {row}).")
    # The estimator's split of the seed: the same key as its own init would use.
    _, init_key = jax.random.split(jax.random.PRNGKey(seed))
    centers = jaxkmeans.init_centers(
        init_key, sample, k, init, metric=metric, num_retries=DEFAULT_NUM_RETRIES
    )
    return np.asarray(centers, dtype=np.float32), m


def _cmd_fit(args: argparse.Namespace) -> int:
    name = f"DATA {args.data!r}"
    data = load_data(args.data)
    n, d = data.shape
    config = _saved_config(args.model_dir)  # None: a new model
    if config is not None:
        config = dict(config, global_step=_saved_step(args.model_dir))
        init, seed = _check_resume(args, config, d, name)
    else:
        init = args.init or jaxkmeans.KMEANS_PLUS_PLUS_INIT
        seed = args.seed if args.seed is not None else secrets.randbits(31)
    mini_batch = args.mini_batch
    batch_size = args.batch_size
    if mini_batch and batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if batch_size is not None:
        batch_size = min(batch_size, n)
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    initial_clusters: Any = init
    sample_rows = None
    if config is None and not mini_batch and batch_size is not None and batch_size < n:
        # Full batch over several batches: the estimator would initialize from the first
        # batch only (it cannot read a stream twice); a file can be, so sample all of it.
        initial_clusters, sample_rows = _sample_init(
            data, name, args.num_clusters, init, args.metric, seed
        )
    model = _resumed_model(
        config is not None,
        num_clusters=args.num_clusters,
        model_dir=args.model_dir,
        initial_clusters=initial_clusters,
        distance_metric=args.metric,
        seed=seed,
        use_mini_batch=mini_batch,
        relative_tolerance=tolerance,
        config=_run_config(args),
    )
    max_steps = args.max_steps
    if max_steps is None:
        passes = DEFAULT_MINI_BATCH_PASSES if mini_batch else 1
        per_pass = math.ceil(n / batch_size) if mini_batch else DEFAULT_FULL_BATCH_STEPS
        max_steps = passes * per_pass
    start_step = model.global_step
    converged = _converged(model, mini_batch, tolerance) if start_step < max_steps else None
    if converged is not None:
        sys.stderr.write(
            f"{PROG}: the model in {args.model_dir!r} has already converged at step "
            f"{start_step} (relative loss change {converged:.3g} < --tolerance {tolerance:g}); "
            "nothing to train.\n"
        )
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(model, max_steps, sys.stderr, show and converged is None)
    # Mini-batch: batches from one fixed shuffle of the rows (seeded, so that a resumed
    # run sees the same batches); full batch: the rows in file order.
    order = None
    if mini_batch:
        order = np.random.default_rng(model.params["seed"]).permutation(n)
    input_fn = _batches(data, name, batch_size, order, progress.update)
    t0 = time.perf_counter()
    try:
        if converged is None and start_step < max_steps:
            model.train(input_fn, max_steps=max_steps)
            if config is None and sample_rows is not None:
                _write_cli_state(args.model_dir, {"initial_clusters": init})
        progress.close()
        seconds = time.perf_counter() - t0
        step = model.global_step
        rows = n if step > start_step else (config or {}).get("rows_per_pass")
        summary = {
            "model_dir": model.model_dir,
            "num_clusters": args.num_clusters,
            "dims": d,
            "rows": n,
            "metric": args.metric,
            "mode": _mode(mini_batch),
            "init": init,
            "init_sample_rows": sample_rows,
            "mini_batch": mini_batch,
            "batch_size": batch_size,
            "seed": model.params["seed"],
            "global_step": step,
            "steps_run": step - start_step,
            "max_steps": max_steps,
            "tolerance": tolerance,
            "stopped": "max_steps" if step >= max_steps else "tolerance",
            **_losses(model, mini_batch, rows),
            "score": model.score(_batches(data, name, PREDICT_BATCH)),
            "seconds": round(seconds, 3),
        }
    except KeyboardInterrupt:
        progress.close(redraw=False)
        if config is None and sample_rows is not None and _saved_step(args.model_dir) is not None:
            _write_cli_state(args.model_dir, {"initial_clusters": init})
        reached = max(progress.last_step, model.global_step)
        sys.stdout.flush()
        sys.stderr.write(_interrupted_message(args.model_dir, reached, start_step) + "\n")
        return 130
    except BaseException:
        progress.close(redraw=False)
        raise
    print(json.dumps(summary))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    model, config = _open_model(args.model_dir)
    data = load_data(args.data)
    name = f"DATA {args.data!r}"
    _check_width(data, name, int(config["dims"]), args.model_dir)
    labels = _predict_labels(model, data, name)
    if args.output is None:
        sys.stdout.write("".join(f"{i}\n" for i in labels.tolist()))
        sys.stdout.flush()
    elif args.output.lower().endswith(".npy"):
        np.save(args.output, labels)
    else:
        with open(args.output, "w") as f:
            f.write("".join(f"{i}\n" for i in labels.tolist()))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    model, config = _open_model(args.model_dir)
    mini_batch = bool(config.get("use_mini_batch", True))
    history = [[int(s), float(v)] for s, v in model.loss_history]
    shown = history if args.history else history[-INFO_HISTORY:]
    init = _cli_state(args.model_dir).get("initial_clusters", config.get("initial_clusters"))
    info = {
        "model_dir": model.model_dir,
        "num_clusters": int(config["num_clusters"]),
        "dims": int(config["dims"]),
        "metric": config["distance_metric"],
        "mode": _mode(mini_batch),
        "global_step": model.global_step,
        **_losses(model, mini_batch, config.get("rows_per_pass")),
        # Full batch: each step's loss; mini-batch: each step's mean_loss (per batch row).
        ("mean_loss_history" if mini_batch else "loss_history"): shown,
        "history_length": len(history),
        "init": init,
        "seed": config.get("seed"),
        "tolerance": config.get("relative_tolerance"),
    }
    if args.centers:
        info["cluster_centers"] = model.cluster_centers().tolist()
    print(json.dumps(info))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    model, config = _open_model(args.model_dir)
    path = model.export_saved_model(args.output)
    print(
        json.dumps(
            {
                "path": path,
                "num_clusters": int(config["num_clusters"]),
                "dims": int(config["dims"]),
                "metric": config["distance_metric"],
                "global_step": model.global_step,
            }
        )
    )
    return 0


def _project_2d(
    points: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Points and centers in 2-D: as they are for d <= 2, else on the points' first two
    principal axes (numpy SVD of the centered points). Also returns axis labels."""
    d = points.shape[1]
    if d == 1:
        return (
            np.column_stack([points[:, 0], np.zeros(len(points))]),
            np.column_stack([centers[:, 0], np.zeros(len(centers))]),
            ("feature 0", ""),
        )
    if d == 2:
        return points, centers, ("feature 0", "feature 1")
    mean = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
    share = 100 * s**2 / max(float(np.sum(s**2)), 1e-30)
    axes = vt[:2].T
    labels = (f"PC1 ({share[0]:.0f}% of variance)", f"PC2 ({share[1]:.0f}% of variance)")
    return (points - mean) @ axes, (centers - mean) @ axes, labels


def _cmd_plot(args: argparse.Namespace) -> int:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise CommandError(
            f"`{PROG} plot` needs matplotlib ({_one_line(e)}); install it with "
            "`pip install 'jaxkmeans[plot]'`."
        ) from None
    model, config = _open_model(args.model_dir)
    data = load_data(args.data)
    name = f"DATA {args.data!r}"
    dims = int(config["dims"])
    _check_width(data, name, dims, args.model_dir)
    n = data.shape[0]
    if n > PLOT_MAX_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(n, PLOT_MAX_POINTS, replace=False))
        shown = np.asarray(data[rows], np.float32)
    else:
        shown = np.asarray(data, np.float32)
    labels = _predict_labels(model, shown, name)
    centers = model.cluster_centers()
    metric = config["distance_metric"]
    if metric == jaxkmeans.COSINE_DISTANCE:  # spherical k-means: compare directions
        norms = np.linalg.norm(shown, axis=1, keepdims=True)
        shown = shown / np.where(norms > 0, norms, 1.0)
    xy, cxy, (xlabel, ylabel) = _project_2d(shown.astype(np.float64), centers.astype(np.float64))
    k = centers.shape[0]

    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax, ax_loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    cmap = "tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, vmin=0, vmax=max(k - 1, 1), s=6)
    ax.scatter(
        cxy[:, 0], cxy[:, 1], marker="X", s=120, c="black", edgecolors="white", linewidths=1.5
    )
    title = f"k={k}, {metric}, step {model.global_step}"
    if len(shown) < n:
        title += f" ({len(shown)} of {n} points)"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

    history = np.asarray(model.loss_history, dtype=np.float64).reshape(-1, 2)
    if len(history):
        ax_loss.plot(history[:, 0], history[:, 1], marker="." if len(history) < 50 else None)
        ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
        if np.all(history[:, 1] > 0) and history[:, 1].max() > 10 * history[:, 1].min():
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no loss history", ha="center", va="center")
    if config.get("use_mini_batch"):
        what, per = "mean_loss", "per row of the step's batch"
    else:
        what, per = "loss", "sum over all rows"
    ax_loss.set_title(f"{what} per step ({per})")
    ax_loss.set_xlabel("global step")
    ax_loss.set_ylabel(what)
    fig.tight_layout()
    fig.savefig(args.output, format="png", dpi=PLOT_DPI)
    print(json.dumps({"output": str(args.output), "points": len(shown), "num_clusters": k}))
    return 0


def _cmd_show_config(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(_config.show_config(mode="dicts"), indent=2, default=str))
    else:
        _config.show_config()
    return 0


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage errors exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an int >= {minimum}; got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}; got {value}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxkmeans`` command."""
    parser = _Parser(
        prog=PROG,
        description="k-means clustering in JAX: train, inspect, predict, export, plot.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {jaxkmeans.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_help = ".npy, or .csv / .txt of numbers (comma or whitespace separated; header skipped)"

    fit = sub.add_parser("fit", help="train a model on DATA, saving checkpoints in --model-dir")
    fit.add_argument("data", metavar="DATA", help=data_help)
    fit.add_argument("--num-clusters", "-k", type=_int_at_least(1), required=True, metavar="K")
    fit.add_argument(
        "--model-dir", required=True, metavar="DIR", help="checkpoints (resumed if present)"
    )
    fit.add_argument("--metric", choices=METRICS, default=jaxkmeans.SQUARED_EUCLIDEAN_DISTANCE)
    fit.add_argument(
        "--init",
        choices=tuple(INIT_METHODS),
        metavar="NAME",
        help=f"one of {', '.join(INIT_METHODS)} (default: {jaxkmeans.KMEANS_PLUS_PLUS_INIT}; "
        "ignored when resuming)",
    )
    fit.add_argument("--mini-batch", action="store_true", help="mini-batch steps (one batch each)")
    fit.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        metavar="B",
        help=f"rows per batch (mini-batch default {DEFAULT_BATCH_SIZE}; full batch: all rows "
        "in one batch unless given, statistics are summed over the batches)",
    )
    fit.add_argument(
        "--max-steps",
        type=_int_at_least(1),
        metavar="N",
        help=f"train until global_step N (default: {DEFAULT_FULL_BATCH_STEPS} full-batch "
        f"steps, or {DEFAULT_MINI_BATCH_PASSES} passes of mini-batches)",
    )
    fit.add_argument(
        "--tolerance",
        type=_non_negative_float,
        metavar="T",
        help="stop once |prev - loss| / (1 + |prev|) < T (default: "
        f"{DEFAULT_TOLERANCE}; 0 never stops early)",
    )
    fit.add_argument(
        "--seed", type=_int_at_least(0), metavar="S", help="random seed (ignored when resuming)"
    )
    save = fit.add_mutually_exclusive_group()
    save.add_argument(
        "--save-every-secs",
        type=_int_at_least(1),
        metavar="S",
        help="save a checkpoint every S seconds of training (default: 600)",
    )
    save.add_argument(
        "--save-every-steps",
        type=_int_at_least(1),
        metavar="N",
        help="save a checkpoint every N steps instead",
    )
    fit.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    fit.set_defaults(run=_cmd_fit)

    predict = sub.add_parser("predict", help="cluster index of every row of DATA")
    predict.add_argument("data", metavar="DATA", help=data_help)
    predict.add_argument("--model-dir", required=True, metavar="DIR")
    predict.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="text, one index per line (.npy: int32 array); default stdout",
    )
    predict.set_defaults(run=_cmd_predict)

    info = sub.add_parser("info", help="the model as JSON")
    info.add_argument("--model-dir", required=True, metavar="DIR")
    info.add_argument("--centers", action="store_true", help="include the cluster centers")
    info.add_argument(
        "--history",
        action="store_true",
        help=f"the whole loss history (default: the last {INFO_HISTORY} steps)",
    )
    info.set_defaults(run=_cmd_info)

    export = sub.add_parser("export", help="write a self-contained serving artifact")
    export.add_argument("--model-dir", required=True, metavar="DIR")
    export.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="base directory of the export"
    )
    export.set_defaults(run=_cmd_export)

    plot = sub.add_parser("plot", help="PNG of the clusters and the loss (needs matplotlib)")
    plot.add_argument("data", metavar="DATA", help=data_help)
    plot.add_argument("--model-dir", required=True, metavar="DIR")
    plot.add_argument("--output", "-o", required=True, metavar="FILE.png")
    plot.set_defaults(run=_cmd_plot)

    show = sub.add_parser(
        "show-config",
        help="versions, devices, native kernel status and compile cache (for bug reports)",
    )
    show.add_argument("--json", action="store_true", help="print a JSON object instead")
    show.set_defaults(run=_cmd_show_config)
    return parser


# --------------------------------------------------------------------------- entry point


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"{PROG}: warning: {_one_line(message)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 on success).

    Run as the program (`argv` None), an interrupted command ends the process at once
    with status 130 once it has said what was saved: an interrupt that lands while JAX
    compiles or dispatches (the first step) could otherwise crash the interpreter's
    teardown (a segmentation fault, status 139) after the checkpoint is on disk.
    """
    status = _main(argv)
    if argv is None and status == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    return status


def _is_user_error(e: BaseException) -> bool:
    """Whether `e` reports a mistake in the command or its input (one line on stderr):
    the CLI's own errors, OS errors, and ValueError / TypeError raised by jaxkmeans'
    own checks; the same types raised inside JAX or numpy are internal errors."""
    if isinstance(e, CommandError | OSError):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return True
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _config.use_default_compilation_cache()
    saved_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except (CommandError, ValueError, TypeError, OSError) as e:
        if not _is_user_error(e):
            raise  # a bug, not a mistake in the command: the traceback is for a report
        if isinstance(e, BrokenPipeError):
            # The reader went away (`... | head`): stop quietly, as other tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        warnings.showwarning = saved_showwarning


if __name__ == "__main__":
    sys.exit(main())
