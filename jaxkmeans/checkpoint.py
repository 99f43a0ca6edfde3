"""Orbax persistence: the only module of jaxkmeans that imports orbax.

A model directory is an Orbax ``CheckpointManager`` directory. Each checkpoint is a
step folder with two items::

    model_dir/
      120/                          one finalized checkpoint (step 120)
        state/                      StandardSave of a flat dict name -> numpy array
        config/metadata             JsonSave of the estimator config
        _CHECKPOINT_METADATA        Orbax step metadata; its custom_metadata holds
                                    SHA-256 digests of every array and of the config
      150/ ...
      150.orbax-checkpoint-tmp      an unfinished save (ignored; removed by the next save)

Guarantees:

* Atomic saves. Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames
  it to ``<step>`` only once every file is written, so a process killed at any moment
  leaves every earlier checkpoint readable and never exposes a half-written one. Old
  checkpoints are removed by renaming them to a temporary name first, then deleting.
* Verified restores. Orbax does not notice flipped bytes inside array data, so every
  array and the config are checked against digests recorded at save time. A damaged
  or unreadable newest checkpoint is skipped with a warning, and the next older
  readable one is used.
* Nothing is created or written before the first :meth:`Checkpointer.save`, and
  reading never writes.

In a multi-process JAX run, call :meth:`Checkpointer.save` from every process (it
is collective, like Orbax's); only process 0 writes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import pathlib
import re
import shutil
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # orbax (and tensorstore through it) is imported on first use
    import orbax.checkpoint as ocp

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "CheckpointStore",
    "Checkpointer",
    "latest_checkpoint",
    "read_checkpoint",
]

_STATE_ITEM = "state"
_CONFIG_ITEM = "config"
_INTEGRITY_KEY = "jaxkmeans_integrity"
_FORMAT_VERSION = 1
# Orbax treats any directory whose name contains this marker as unfinished
# (``orbax.checkpoint.path.step.TMP_DIR_SUFFIX``; `_orbax` checks that they agree).
_TMP_MARKER = ".orbax-checkpoint-tmp"
# Orbax's default step folder names (no prefix, no zero padding): "0", "7", "120".
_STEP_NAME = re.compile(r"^(0|[1-9][0-9]*)$")
_barrier_ids = itertools.count()


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, unreadable or does not fit the request.

    A subclass of ``ValueError``.

    Examples:
        >>> import tempfile, numpy as np
        >>> from jaxkmeans.checkpoint import CheckpointError, Checkpointer
        >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
        ...     try:
        ...         ckpt.restore()
        ...     except CheckpointError as e:
        ...         print(isinstance(e, ValueError))
        True
    """


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one.

    Examples:
        >>> from jaxkmeans.checkpoint import CheckpointWarning
        >>> issubclass(CheckpointWarning, UserWarning)
        True
    """


class _Damaged(Exception):
    """Internal: one checkpoint step cannot be read back intact."""


@functools.cache
def _orbax() -> Any:
    """``orbax.checkpoint``, imported on first use: ``import jaxkmeans`` stays light."""
    import orbax.checkpoint

    if orbax.checkpoint.path.step.TMP_DIR_SUFFIX != _TMP_MARKER:  # pragma: no cover
        raise ImportError(
            "this orbax-checkpoint marks unfinished saves with "
            f"{orbax.checkpoint.path.step.TMP_DIR_SUFFIX!r}, jaxkmeans expects {_TMP_MARKER!r}"
        )
    return orbax.checkpoint


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    orbax_ckpt = _orbax()
    registry = orbax_ckpt.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE_ITEM, orbax_ckpt.args.StandardSave)
    registry.add(_STATE_ITEM, orbax_ckpt.args.StandardRestore)
    registry.add(_CONFIG_ITEM, orbax_ckpt.args.JsonSave)
    registry.add(_CONFIG_ITEM, orbax_ckpt.args.JsonRestore)
    return registry


def _new_manager(root: pathlib.Path) -> ocp.CheckpointManager:
    options = _orbax().CheckpointManagerOptions(
        create=False,  # directories are created by `save`, never on open
        enable_async_checkpointing=False,  # `save` returns only after the commit
        max_to_keep=None,  # pruning is done here, with atomic renames
        cleanup_tmp_directories=False,  # done synchronously by `_cleanup_unfinished`
        lightweight_initialize=True,
    )
    return _orbax().CheckpointManager(root, options=options, handler_registry=_handler_registry())


def _is_primary() -> bool:
    return _orbax().multihost.process_index() == 0


def _barrier(tag: str) -> None:
    """Waits for every process (a no-op in a single-process run)."""
    _orbax().multihost.sync_global_processes(f"jaxkmeans_checkpoint_{tag}_{next(_barrier_ids)}")


def _remove_tree(path: pathlib.Path) -> None:
    """Atomically hides `path` from Orbax (rename to a tmp name), then deletes it."""
    if not path.exists():
        return
    trash = path.with_name(path.name + _TMP_MARKER + "-deleted")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash)


def _array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def _check_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validates and converts a flat state dict to native-endian numpy arrays."""
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"`state` must be a non-empty dict of name -> array; got {state!r}.")
    arrays = {}
    for name, value in state.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"`state` keys must be non-empty strings; got {name!r}.")
        array = np.asarray(value)
        if array.dtype.kind in "OUSMm" or array.dtype.fields is not None:
            raise TypeError(
                f"`state[{name!r}]` must be a numeric or boolean array; got dtype {array.dtype}."
            )
        if array.size == 0:
            raise ValueError(
                f"`state[{name!r}]` must not be empty (Orbax cannot save zero-size arrays); "
                f"got shape {array.shape}."
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        arrays[name] = array
    return arrays


def _check_config(config: Mapping[str, Any]) -> tuple[dict, str]:
    """Returns the config as it will read back from JSON, and its canonical text."""
    if not isinstance(config, Mapping):
        raise TypeError(f"`config` must be a JSON-serializable dict; got {type(config)}.")
    try:
        text = _config_text(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`config` must be a JSON-serializable dict; {e}.") from e
    restored = json.loads(text)
    return restored, _config_text(restored)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise TypeError(f"`step` must be an int; got {step!r}.")
    if step < 0:
        raise ValueError(f"`step` must be >= 0; got {step}.")
    return int(step)


def _integrity(arrays: Mapping[str, np.ndarray], config_text: str) -> dict:
    return {
        "version": _FORMAT_VERSION,
        "state": {name: _array_digest(a) for name, a in arrays.items()},
        "config": hashlib.sha256(config_text.encode()).hexdigest(),
    }


def _check_target(
    target: Mapping[str, Any], state: Mapping[str, np.ndarray], where: str
) -> dict[str, np.ndarray]:
    """Raises CheckpointError unless `state` has exactly `target`'s names, shapes, dtypes."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {where} does not fit the target: fields missing from the "
            f"checkpoint {missing}, fields not in the target {unexpected}."
        )
    for name, template in target.items():
        shape = tuple(np.shape(template))
        dtype = np.dtype(
            template.dtype if hasattr(template, "dtype") else np.asarray(template).dtype
        )
        found = state[name]
        if found.shape != shape or found.dtype != dtype:
            raise CheckpointError(
                f"Checkpoint {where} does not fit the target: field {name!r} expected "
                f"shape {shape} {dtype}, found shape {found.shape} {found.dtype}."
            )
    return {name: state[name] for name in target}


class Checkpointer:
    """Orbax CheckpointManager over one directory; items "state" and "config".

    Args:
        directory: the model directory (str or os.PathLike). It is made absolute and
            neither created nor written until the first :meth:`save`.
        max_to_keep: how many checkpoints to keep (the newest by step), or None to
            keep all.

    Saving a step that already exists keeps the existing checkpoint when it is intact
    and holds the same state and config (a no-op, nothing is written); otherwise the
    new checkpoint replaces it: it is written completely under a temporary name, then
    swapped in with two renames (a kill between those two renames hides that one step;
    older checkpoints stay readable).

    One writer per directory at a time; not thread-safe.

    Examples:
        >>> import tempfile, numpy as np
        >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
        ...     ckpt.save(10, {"centers": np.zeros((2, 3), np.float32)}, {"k": 2})
        ...     step, state, config = ckpt.restore()
        >>> step, state["centers"].shape, config
        (10, (2, 3), {'k': 2})
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 5):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(f"`max_to_keep` must be a positive int or None; got {max_to_keep!r}.")
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.max_to_keep = max_to_keep
        self._manager: ocp.CheckpointManager | None = None
        self._cleaned = False

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, max_to_keep={self.max_to_keep})"

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------- listing

    def steps(self) -> list[int]:
        """Finalized checkpoint steps, ascending ([] when the directory is missing).

        Finalized means fully written and committed; it does not mean verified.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2)
            >>> for step in (1, 2, 3):
            ...     ckpt.save(step, {"x": np.zeros(2)}, {})
            >>> ckpt.steps()  # max_to_keep=2
            [2, 3]
        """
        # Orbax's rule (orbax.checkpoint.path.step.standard_name_format): a finalized
        # step is a directory named by the step; unfinished ones carry a tmp suffix.
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(e.name) for e in entries if _STEP_NAME.match(e.name) and e.is_dir())

    def latest_step(self) -> int | None:
        """The newest finalized step, or None.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2)
            >>> ckpt.latest_step() is None
            True
            >>> ckpt.save(7, {"x": np.zeros(2)}, {})
            >>> ckpt.latest_step()
            7
        """
        steps = self.steps()
        return steps[-1] if steps else None

    def checkpoint_path(self, step: int | None = None) -> str | None:
        """Path of the newest (or the given) finalized checkpoint, or None if absent.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2)
            >>> ckpt.save(7, {"x": np.zeros(2)}, {})
            >>> ckpt.checkpoint_path() == str(ckpt.directory / "7"), ckpt.checkpoint_path(8)
            (True, None)
        """
        steps = self.steps()
        if step is None:
            step = steps[-1] if steps else None
        if step is None or step not in steps:
            return None
        return str(self._step_dir(step))

    def _step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Writes one checkpoint and returns once it is committed to disk.

        Args:
            step: the global step (int >= 0); it names the checkpoint.
            state: flat dict name -> numpy array or scalar (numeric or boolean).
            config: JSON-serializable dict.

        Raises:
            TypeError, ValueError: bad arguments (nothing is written).
            CheckpointError: the write failed (earlier checkpoints are untouched).

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp())
            >>> ckpt.save(5, {"centers": np.ones((2, 2), np.float32), "step": 5}, {"k": 2})
            >>> ckpt.steps()
            [5]
        """
        step = _check_step(step)
        arrays = _check_state(state)
        config, config_text = _check_config(config)
        integrity = _integrity(arrays, config_text)
        try:
            manager = self._open(create=True)
            _barrier("save_start")
            if step not in self.steps():
                decision = "new"
            elif self._intact_with(step, integrity):
                decision = "same"
            else:
                decision = "replace"
            _barrier("save_decided")
            if decision == "new":
                assert manager is not None  # create=True made the directory
                if step in manager.all_steps():  # cached; stale after our own deletions
                    manager.reload()
                self._orbax_save(manager, step, arrays, config, integrity)
            elif decision == "replace":
                self._replace(step, arrays, config, integrity)
            if _is_primary():
                self._prune(keep=step)
            _barrier("save_done")
        except (OSError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f"Could not save checkpoint step {step} in {self.directory}: {e}"
            ) from e

    def _open(self, create: bool = False) -> ocp.CheckpointManager | None:
        """The Orbax manager; None if the directory is missing and `create` is False."""
        if create:
            if _is_primary():
                self.directory.mkdir(parents=True, exist_ok=True)
                if not self._cleaned:
                    self._cleanup_unfinished()
            self._cleaned = True
            _barrier("open")
        if self._manager is None:
            if not self.directory.is_dir():
                return None
            self._manager = _new_manager(self.directory)
        return self._manager

    def _cleanup_unfinished(self) -> None:
        """Removes leftovers of interrupted saves, replaces and deletions."""
        for tmp in _orbax().path.step.all_temporary_paths(self.directory):
            shutil.rmtree(tmp.get(), ignore_errors=True)

    def _orbax_save(self, manager, step, arrays, config, integrity) -> None:
        manager.save(
            step,
            args=_orbax().args.Composite(
                **{
                    _STATE_ITEM: _orbax().args.StandardSave(arrays),
                    _CONFIG_ITEM: _orbax().args.JsonSave(config),
                }
            ),
            custom_metadata={_INTEGRITY_KEY: integrity},
            force=True,
        )
        manager.wait_until_finished()
        manager.check_for_errors()

    def _replace(self, step, arrays, config, integrity) -> None:
        """Writes the step completely elsewhere, then swaps it in with two renames."""
        name = str(step)
        staging = self.directory / f"{name}{_TMP_MARKER}-staging"
        if _is_primary() and staging.exists():
            shutil.rmtree(staging)
        _barrier("replace_start")
        if _is_primary():
            staging.mkdir()
        _barrier("replace_staging")
        stage_manager = _new_manager(staging)
        try:
            self._orbax_save(stage_manager, step, arrays, config, integrity)
        finally:
            stage_manager.close()
        if _is_primary():
            old = self.directory / name
            trash = self.directory / f"{name}{_TMP_MARKER}-replaced"
            if trash.exists():
                shutil.rmtree(trash)
            os.rename(old, trash)
            os.rename(staging / name, old)
            shutil.rmtree(trash)
            shutil.rmtree(staging)

    def _prune(self, keep: int) -> None:
        """Keeps `keep` and the newest max_to_keep - 1 other steps."""
        if self.max_to_keep is None:
            return
        others = [s for s in self.steps() if s != keep]
        excess = len(others) - (self.max_to_keep - 1)
        for step in others[: max(excess, 0)]:
            _remove_tree(self._step_dir(step))

    # --------------------------------------------------------------- restoring

    def restore(
        self, target: Mapping[str, Any] | None = None, step: int | None = None
    ) -> tuple[int, dict[str, np.ndarray], dict]:
        """Reads a checkpoint back and verifies it.

        Args:
            target: optional dict name -> array (or anything with shape and dtype,
                e.g. jax.ShapeDtypeStruct). The checkpoint must hold exactly these
                names with these shapes and dtypes.
            step: the step to read; None for the newest readable one. If the newest is
                damaged, a CheckpointWarning names it and older ones are tried.

        Returns:
            (step, state, config): state maps names to numpy arrays with the saved
            dtypes (0-d arrays for scalars); config is the saved dict.

        Raises:
            CheckpointError: no checkpoint, the requested step is missing or
                damaged, no checkpoint is readable, or the target does not fit.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp())
            >>> ckpt.save(1, {"x": np.zeros(2, np.float32)}, {"k": 2})
            >>> step, state, config = ckpt.restore({"x": np.zeros(2, np.float32)})
            >>> step, state["x"].dtype, config
            (1, dtype('float32'), {'k': 2})
            >>> ckpt.restore({"x": np.zeros(3, np.float32)})
            Traceback (most recent call last):
            ...
            jaxkmeans.checkpoint.CheckpointError: ...
        """
        if step is not None:
            step = _check_step(step)
            if step not in self.steps():
                raise CheckpointError(
                    f"No checkpoint for step {step} in {self.directory}; "
                    f"available steps: {self.steps()}."
                )
            try:
                state, config = self._read(step)
            except _Damaged as e:
                raise CheckpointError(
                    f"Checkpoint step {step} in {self.directory} is damaged: {e}"
                ) from e
            return step, self._fit(target, state, step), config

        steps = self.steps()
        if not steps:
            raise CheckpointError(f"No checkpoint found in {self.directory}.")
        failures = []
        for candidate in reversed(steps):
            try:
                state, config = self._read(candidate)
            except _Damaged as e:
                failures.append(f"step {candidate}: {e}")
                warnings.warn(
                    f"Checkpoint step {candidate} at {self._step_dir(candidate)} is damaged "
                    f"or unreadable ({e}); falling back to an older checkpoint.",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            return candidate, self._fit(target, state, candidate), config
        raise CheckpointError(f"No readable checkpoint in {self.directory}: " + "; ".join(failures))

    def read_config(self, step: int | None = None) -> dict:
        """The config of the checkpoint that `restore(step=step)` would return.

        The whole checkpoint is read and verified, so the config always belongs to
        an intact checkpoint (same fallback and errors as :meth:`restore`).

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp())
            >>> ckpt.save(1, {"x": np.zeros(2)}, {"num_clusters": 2})
            >>> ckpt.read_config()
            {'num_clusters': 2}
        """
        return self.restore(step=step)[2]

    def _fit(self, target, state, step) -> dict[str, np.ndarray]:
        if target is None:
            return state
        if not isinstance(target, Mapping):
            raise TypeError(f"`target` must be a dict of name -> array; got {type(target)}.")
        return _check_target(target, state, f"step {step} in {self.directory}")

    def _intact_with(self, step: int, integrity: dict) -> bool:
        """True if `step` reads back intact and holds exactly this state and config."""
        try:
            self._read(step)
        except _Damaged:
            return False
        return self._recorded_integrity(step) == integrity

    def _recorded_integrity(self, step: int) -> dict | None:
        # Raises ValueError when _CHECKPOINT_METADATA is missing or unreadable.
        custom = _orbax().metadata.get_step_metadata(self._step_dir(step)).custom_metadata
        return (custom or {}).get(_INTEGRITY_KEY)

    def _read(self, step: int) -> tuple[dict[str, np.ndarray], dict]:
        """Restores one step and checks it against its digests; raises _Damaged."""
        try:
            integrity = self._recorded_integrity(step)
            if not isinstance(integrity, dict) or integrity.get("version") != _FORMAT_VERSION:
                raise _Damaged("its integrity record is missing or unreadable")
            manager = self._open()
            if manager is None:
                raise _Damaged("the directory is missing")
            restored = manager.restore(
                step,
                args=_orbax().args.Composite(
                    **{
                        _STATE_ITEM: _orbax().args.StandardRestore(),
                        _CONFIG_ITEM: _orbax().args.JsonRestore(),
                    }
                ),
            )
            state, config = restored[_STATE_ITEM], restored[_CONFIG_ITEM]
        except _Damaged:
            raise
        except MemoryError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many kinds on bad files.
            raise _Damaged(f"{type(e).__name__}: {_first_line(e)}") from e
        if not isinstance(state, Mapping) or not isinstance(config, dict):
            raise _Damaged("its items have an unexpected structure")
        state = {name: np.asarray(value) for name, value in state.items()}
        expected = integrity.get("state", {})
        if set(state) != set(expected):
            raise _Damaged(f"it holds fields {sorted(state)} but recorded {sorted(expected)}")
        for name, array in state.items():
            if _array_digest(array) != expected[name]:
                raise _Damaged(f"field {name!r} does not match its recorded checksum")
        if hashlib.sha256(_config_text(config).encode()).hexdigest() != integrity.get("config"):
            raise _Damaged("the config does not match its recorded checksum")
        return state, config

    # ------------------------------------------------------------------- close

    def close(self) -> None:
        """Releases Orbax resources. Idempotent; the object may still be used after.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import Checkpointer
            >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2)
            >>> ckpt.save(1, {"x": np.zeros(2)}, {})
            >>> ckpt.close(); ckpt.close()
            >>> ckpt.latest_step()
            1
        """
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


class CheckpointStore:
    """One model directory as a stateful estimator uses it.

    The newest readable checkpoint (state and config) is read once, at construction
    (a damaged newest one is skipped with a :class:`CheckpointWarning`, as in
    :meth:`Checkpointer.restore`); :meth:`load` checks it against the estimator.
    :meth:`save` writes a checkpoint and keeps the caller's snapshot of what it saved,
    so that a failed update can be rolled back to it (:attr:`saved`).

    Args:
        directory: the model directory (str or os.PathLike); nothing is created or
            written before the first :meth:`save`.
        max_to_keep: as for :class:`Checkpointer`.

    Attributes:
        directory: the absolute path of the model directory (str).
        step, config: the newest checkpoint's step and config (None when there is none).
        saved: the snapshot given to the last :meth:`save` or :meth:`remember`.

    Examples:
        >>> import tempfile, numpy as np
        >>> from jaxkmeans.checkpoint import CheckpointStore
        >>> d = tempfile.mkdtemp()
        >>> store = CheckpointStore(d)
        >>> store.step, store.state()
        (None, None)
        >>> store.save(3, {"x": np.ones(2)}, {"format": "demo"}, snapshot="after step 3")
        >>> store.close()
        >>> again = CheckpointStore(d)
        >>> again.step, again.config, again.state()["x"].tolist()
        (3, {'format': 'demo'}, [1.0, 1.0])
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 5):
        self._checkpointer = Checkpointer(directory, max_to_keep=max_to_keep)
        self.directory = str(self._checkpointer.directory)
        self.step: int | None = None
        self.config: dict | None = None
        self._state: dict[str, np.ndarray] | None = None
        self.saved: Any = None
        if self._checkpointer.steps():
            self.step, self._state, self.config = self._checkpointer.restore()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.directory!r}, step={self.step})"

    def state(self) -> dict[str, np.ndarray] | None:
        """The newest checkpoint's state as read at construction, unchecked (None if none).

        Examples:
            >>> import tempfile
            >>> from jaxkmeans.checkpoint import CheckpointStore
            >>> CheckpointStore(tempfile.mkdtemp()).state() is None
            True
        """
        return self._state

    def load(
        self,
        fmt: str,
        owner: str,
        expected: Mapping[str, tuple[Any, str]],
        template: Any,
    ) -> dict[str, np.ndarray] | None:
        """The newest checkpoint's state, checked against its owner; None if none.

        Args:
            fmt: the config's ``"format"`` the owner writes; another one is a ValueError.
            owner: the owner's class name, for messages (``"KMeans"``).
            expected: config key -> ``(value, note)``; a saved value that differs is a
                ValueError naming all of them, e.g. ``num_clusters=4 (asked 3)``. A
                None value is not checked.
            template: a callable from the saved config to a dict name -> array (or
                anything with shape and dtype) the state must fit exactly.

        Raises:
            ValueError: the format or an expected value does not fit.
            CheckpointError: the state does not fit the template.

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import CheckpointStore
            >>> d = tempfile.mkdtemp()
            >>> store = CheckpointStore(d)
            >>> store.save(1, {"x": np.ones(2)}, {"format": "demo", "k": 2}, snapshot=None)
            >>> store = CheckpointStore(d)
            >>> template = lambda config: {"x": np.zeros(2)}
            >>> store.load("demo", "Demo", {"k": (2, "")}, template)["x"].tolist()
            [1.0, 1.0]
            >>> store.load("demo", "Demo", {"k": (3, "asked 3")}, template)
            Traceback (most recent call last):
            ...
            ValueError: the checkpoint ... does not fit this Demo: it has k=2 (asked 3). ...
        """
        config = self.config
        if config is None:
            return None
        if config.get("format") != fmt:
            raise ValueError(
                f"`model_dir` {self.directory!r} holds checkpoints that were not written by "
                f"jaxkmeans.{owner}."
            )
        problems = [
            f"{key}={config[key]!r} ({note})"
            for key, (value, note) in expected.items()
            if value is not None and key in config and config[key] != value
        ]
        if problems:
            raise ValueError(
                f"the checkpoint in model_dir {self.directory!r} does not fit this {owner}: it "
                f"has {', '.join(problems)}. Use another model_dir or matching parameters."
            )
        where = f"step {self.step} in {self._checkpointer.directory}"
        assert self._state is not None  # restored together with self.config
        return _check_target(template(config), self._state, where)

    def remember(self, snapshot: Any) -> None:
        """Keeps `snapshot` as the state to roll back to (what the directory holds).

        Examples:
            >>> import tempfile
            >>> from jaxkmeans.checkpoint import CheckpointStore
            >>> store = CheckpointStore(tempfile.mkdtemp())
            >>> store.remember({"step": 0})
            >>> store.saved
            {'step': 0}
        """
        self.saved = snapshot

    def save(
        self, step: int, state: Mapping[str, Any], config: Mapping[str, Any], snapshot: Any
    ) -> None:
        """:meth:`Checkpointer.save`, then keeps `snapshot` (see :meth:`remember`).

        Examples:
            >>> import tempfile, numpy as np
            >>> from jaxkmeans.checkpoint import CheckpointStore
            >>> store = CheckpointStore(tempfile.mkdtemp())
            >>> store.save(1, {"x": np.ones(2)}, {}, snapshot="state at step 1")
            >>> store.saved
            'state at step 1'
        """
        self._checkpointer.save(step, state, config)
        self.saved = snapshot

    def close(self) -> None:
        """Releases Orbax resources (the store may still be used after).

        Examples:
            >>> import tempfile
            >>> from jaxkmeans.checkpoint import CheckpointStore
            >>> store = CheckpointStore(tempfile.mkdtemp())
            >>> store.close()
        """
        self._checkpointer.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """Path of the newest finalized checkpoint in `directory`; None if none or no dir.

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from jaxkmeans.checkpoint import Checkpointer, latest_checkpoint
        >>> d = tempfile.mkdtemp()
        >>> latest_checkpoint(os.path.join(d, "missing")) is None
        True
        >>> with Checkpointer(d) as ckpt:
        ...     ckpt.save(4, {"x": np.zeros(1)}, {})
        >>> os.path.basename(latest_checkpoint(d))
        '4'
    """
    with Checkpointer(directory, max_to_keep=None) as checkpointer:
        return checkpointer.checkpoint_path()


def read_checkpoint(path: str | os.PathLike) -> tuple[int, dict[str, np.ndarray], dict]:
    """``(step, state, config)`` of one checkpoint, given its step directory (a path
    returned by :func:`latest_checkpoint`, or ``model_dir/<step>``), verified.

    Raises:
        ValueError: `path` is not a finalized checkpoint step directory.
        CheckpointError: it is damaged or unreadable.

    Examples:
        >>> import tempfile, numpy as np
        >>> from jaxkmeans.checkpoint import Checkpointer, latest_checkpoint, read_checkpoint
        >>> d = tempfile.mkdtemp()
        >>> with Checkpointer(d) as ckpt:
        ...     ckpt.save(4, {"x": np.arange(3)}, {"k": 3})
        >>> step, state, config = read_checkpoint(latest_checkpoint(d))
        >>> step, state["x"].tolist(), config
        (4, [0, 1, 2], {'k': 3})
    """
    p = pathlib.Path(path).expanduser().resolve()
    if not _STEP_NAME.match(p.name) or not p.is_dir():
        raise ValueError(
            "`checkpoint_path` must be a checkpoint directory (a path returned by "
            f"latest_checkpoint(), or model_dir/<step>); got {str(path)!r}"
            + (" (it does not exist)." if not p.exists() else ".")
        )
    with Checkpointer(p.parent, max_to_keep=None) as checkpointer:
        return checkpointer.restore(step=int(p.name))
