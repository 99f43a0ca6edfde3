"""Tests for jaxkmeans.checkpoint: Orbax round trips, pruning, damage, atomicity."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import jax
import numpy as np
import pytest

from jaxkmeans.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointWarning,
    latest_checkpoint,
    read_checkpoint,
)

CONFIG = {"num_clusters": 4, "dims": 3, "metric": "squared_euclidean", "seed": 7}


def make_state(step=0):
    """A state like the estimator's: float32/int32/uint32 arrays and 0-d scalars."""
    rng = np.random.default_rng(step)
    return {
        "centers": rng.normal(size=(64, 16)).astype(np.float32),
        "counts": rng.integers(0, 100, size=64).astype(np.int32),
        "rng_key": np.array([step, 12345], dtype=np.uint32),
        "step": np.int32(step),
        "loss": np.float32(0.5 + step),
        "flag": np.array(True),
    }


def assert_states_equal(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert isinstance(b[name], np.ndarray), name
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=name)


def tree_snapshot(root):
    """Every path and file content under root (to prove nothing was written)."""
    root = pathlib.Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def state_data_files(step_dir):
    """The files of a checkpoint's state item, largest (the array data) first."""
    files = [p for p in (pathlib.Path(step_dir) / "state").rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


@pytest.fixture
def ckpt(tmp_path):
    with Checkpointer(tmp_path / "model", max_to_keep=3) as checkpointer:
        yield checkpointer


def test_round_trip_keeps_values_dtypes_and_scalars(ckpt):
    state = make_state(3)
    ckpt.save(3, state, CONFIG)
    step, restored, config = ckpt.restore()
    assert step == 3
    assert config == CONFIG
    assert_states_equal(state, restored)
    assert restored["step"].shape == () and restored["step"].dtype == np.int32
    assert restored["loss"].shape == () and restored["loss"].dtype == np.float32
    assert restored["rng_key"].dtype == np.uint32


def test_config_reads_back_as_json(ckpt):
    ckpt.save(1, make_state(1), {"k": 2, "dims": (3, 4), "tol": 1e-4, "name": None})
    assert ckpt.read_config() == {"k": 2, "dims": [3, 4], "tol": 1e-4, "name": None}


def test_steps_and_latest_step_after_several_saves(ckpt, tmp_path):
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    for step in (5, 10, 20):
        ckpt.save(step, make_state(step), CONFIG)
    assert ckpt.steps() == [5, 10, 20]
    assert ckpt.latest_step() == 20
    assert ckpt.checkpoint_path() == str(tmp_path / "model" / "20")
    assert ckpt.checkpoint_path(10) == str(tmp_path / "model" / "10")
    assert ckpt.checkpoint_path(11) is None
    step, state, _ = ckpt.restore(step=10)
    assert step == 10
    assert_states_equal(make_state(10), state)


def test_steps_agree_with_orbax_listing(ckpt):
    import orbax.checkpoint as ocp

    for step in (0, 3, 12):
        ckpt.save(step, make_state(step), CONFIG)
    (ckpt.directory / "40.orbax-checkpoint-tmp").mkdir()  # unfinished save
    (ckpt.directory / "007").mkdir()  # not a step name
    (ckpt.directory / "50").write_text("a file, not a checkpoint")
    listed = ocp.path.step.standard_name_format().find_all(ckpt.directory)
    assert ckpt.steps() == sorted(m.step for m in listed) == [0, 3, 12]


def test_reading_writes_nothing_and_save_leaves_no_threads(tmp_path):
    directory = tmp_path / "model"
    threads_before = set(threading.enumerate())
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, make_state(1), CONFIG)
        ckpt.save(2, make_state(2), CONFIG)
        assert not [n for n in os.listdir(directory) if n not in ("1", "2")]  # committed
        # Orbax's asyncio helper thread may take a moment to exit; no save is pending.
        deadline = time.monotonic() + 5
        while not set(threading.enumerate()) <= threads_before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(threading.enumerate()) <= threads_before
    before = tree_snapshot(directory)
    with Checkpointer(directory) as ckpt:
        ckpt.steps()
        ckpt.restore()
        ckpt.restore(step=1)
        ckpt.read_config()
    latest_checkpoint(directory)
    assert tree_snapshot(directory) == before


def test_max_to_keep_prunes_oldest(tmp_path):
    with Checkpointer(tmp_path / "m", max_to_keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, make_state(step), CONFIG)
        assert ckpt.steps() == [4, 5]
    assert sorted(os.listdir(tmp_path / "m")) == ["4", "5"]
    with Checkpointer(tmp_path / "all", max_to_keep=None) as ckpt:
        for step in range(1, 8):
            ckpt.save(step, make_state(step), CONFIG)
        assert ckpt.steps() == list(range(1, 8))


def test_saving_an_existing_step(ckpt):
    ckpt.save(7, make_state(7), CONFIG)
    path = pathlib.Path(ckpt.checkpoint_path(7))
    before = tree_snapshot(path)
    ckpt.save(7, make_state(7), CONFIG)  # same content: a no-op
    assert tree_snapshot(path) == before
    ckpt.save(7, make_state(8), dict(CONFIG, seed=8))  # new content replaces it
    step, state, config = ckpt.restore()
    assert step == 7 and config["seed"] == 8
    assert_states_equal(make_state(8), state)
    assert sorted(os.listdir(ckpt.directory)) == ["7"]


def test_restore_with_explicit_target(ckpt):
    state = make_state(2)
    ckpt.save(2, state, CONFIG)
    target = {name: np.zeros_like(value) for name, value in state.items()}
    _, restored, _ = ckpt.restore(target)
    assert_states_equal(state, restored)
    abstract = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in state.items()}
    _, restored, _ = ckpt.restore(abstract, step=2)
    assert_states_equal(state, restored)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"centers": np.zeros((5, 16), np.float32)},
            r"'centers' expected shape \(5, 16\) float32, found shape \(64, 16\) float32",
        ),
        (
            {"centers": np.zeros((64, 16), np.float64)},
            r"'centers' expected shape \(64, 16\) float64",
        ),
        ({"extra": np.zeros(2)}, r"missing from the checkpoint \['extra'\]"),
    ],
)
def test_target_mismatch_raises(ckpt, change, match):
    state = make_state(1)
    ckpt.save(1, state, CONFIG)
    target = {**{k: np.zeros_like(v) for k, v in state.items()}, **change}
    with pytest.raises(CheckpointError, match=match):
        ckpt.restore(target)
    with pytest.raises(CheckpointError, match=str(ckpt.directory)):
        ckpt.restore(target)


def test_nothing_is_created_or_written_before_the_first_save(tmp_path):
    missing = tmp_path / "missing" / "model"
    ckpt = Checkpointer(missing)
    assert ckpt.directory == missing.resolve()
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    assert ckpt.checkpoint_path() is None
    assert latest_checkpoint(missing) is None
    with pytest.raises(CheckpointError, match="No checkpoint found"):
        ckpt.restore()
    with pytest.raises(CheckpointError, match="No checkpoint found"):
        ckpt.read_config()
    ckpt.close()
    assert not (tmp_path / "missing").exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("user file")
    before = tree_snapshot(existing)
    with Checkpointer(existing) as ckpt:
        assert ckpt.steps() == []
        with pytest.raises(CheckpointError):
            ckpt.restore()
    assert tree_snapshot(existing) == before


def test_bad_arguments_write_nothing(tmp_path):
    ckpt = Checkpointer(tmp_path / "model")
    with pytest.raises(TypeError, match="config"):
        ckpt.save(1, make_state(1), {"fn": print})
    with pytest.raises(TypeError, match="state"):
        ckpt.save(1, {"names": np.array(["a", "b"])}, CONFIG)
    with pytest.raises(ValueError, match="state"):
        ckpt.save(1, {}, CONFIG)
    with pytest.raises(ValueError, match="step"):
        ckpt.save(-1, make_state(1), CONFIG)
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    assert not (tmp_path / "model").exists()


def damage_delete(step_dir):
    state_data_files(step_dir)[0].unlink()


def damage_truncate(step_dir):
    path = state_data_files(step_dir)[0]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def damage_flip_bytes(step_dir):
    """Silent corruption that Orbax itself does not notice (caught by the checksums)."""
    path = state_data_files(step_dir)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_metadata(step_dir):
    (pathlib.Path(step_dir) / "state" / "_METADATA").unlink()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage", [damage_delete, damage_truncate, damage_flip_bytes, damage_metadata]
)
def test_damaged_newest_falls_back_to_previous(tmp_path, damage):
    directory = tmp_path / "model"
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, make_state(1), CONFIG)
        ckpt.save(2, make_state(2), dict(CONFIG, seed=2))
    damage(directory / "2")
    with Checkpointer(directory) as ckpt:
        assert ckpt.steps() == [1, 2]
        with pytest.warns(CheckpointWarning, match=r"step 2 at .*model/2"):
            step, state, config = ckpt.restore()
        assert step == 1 and config == CONFIG
        assert_states_equal(make_state(1), state)
        with pytest.warns(CheckpointWarning, match="step 2"):
            assert ckpt.read_config() == CONFIG
        with pytest.raises(CheckpointError, match="step 2 .* is damaged"):
            ckpt.restore(step=2)
        # Saving the damaged step again replaces it with an intact checkpoint.
        ckpt.save(2, make_state(2), dict(CONFIG, seed=2))
        step, state, _ = ckpt.restore()
        assert step == 2
        assert_states_equal(make_state(2), state)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_all_damaged_raises(tmp_path):
    directory = tmp_path / "model"
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, make_state(1), CONFIG)
        ckpt.save(2, make_state(2), CONFIG)
    damage_truncate(directory / "1")
    damage_flip_bytes(directory / "2")
    with Checkpointer(directory) as ckpt:
        with pytest.warns(CheckpointWarning):
            with pytest.raises(
                CheckpointError, match=r"No readable checkpoint in .*step 2.*step 1"
            ):
                ckpt.restore()


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "nothing") is None
    assert latest_checkpoint(tmp_path) is None
    with Checkpointer(str(tmp_path / "model")) as ckpt:
        ckpt.save(3, make_state(3), CONFIG)
        ckpt.save(9, make_state(9), CONFIG)
    assert latest_checkpoint(tmp_path / "model") == str(tmp_path / "model" / "9")
    (tmp_path / "model" / "12.orbax-checkpoint-tmp").mkdir()  # unfinished: ignored
    assert latest_checkpoint(tmp_path / "model") == str(tmp_path / "model" / "9")


def test_read_checkpoint_by_its_path(tmp_path):
    with Checkpointer(str(tmp_path / "model"), max_to_keep=None) as ckpt:
        ckpt.save(3, make_state(3), CONFIG)
        ckpt.save(9, make_state(9), CONFIG)
    step, state, config = read_checkpoint(tmp_path / "model" / "3")
    assert step == 3 and config == CONFIG
    assert_states_equal(make_state(3), state)
    assert read_checkpoint(latest_checkpoint(tmp_path / "model"))[0] == 9
    for bad in (tmp_path / "model" / "4", tmp_path / "model", tmp_path / "nothing" / "3"):
        with pytest.raises(ValueError, match="checkpoint_path"):
            read_checkpoint(bad)


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from jaxkmeans.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], max_to_keep=2)
    ckpt.save(1, {"centers": np.full((8, 4), 1.0, np.float32), "step": np.int64(1)}, {"s": 1})
    print("saved-1", flush=True)
    step = 2
    while True:  # big saves until killed
        centers = np.full((1024, 2048), float(step), np.float32)
        ckpt.save(step, {"centers": centers, "step": np.int64(step)}, {"s": step})
        step += 1
    """
)


@pytest.mark.parametrize("delay", [0.05, 0.4])
def test_sigkill_mid_save_leaves_a_readable_checkpoint(tmp_path, delay):
    directory = tmp_path / "model"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        text=True,
    ) as proc:
        watchdog = threading.Timer(60, proc.kill)  # bounds the wait for the marker
        watchdog.start()
        try:
            line = proc.stdout.readline()  # returns once the child saved step 1 (or died)
            assert line.strip() == "saved-1", "child did not save step 1"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL

    with Checkpointer(directory, max_to_keep=2) as ckpt, warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # a kill never damages
        step, state, config = ckpt.restore()
        assert config == {"s": step}
        if step == 1:
            np.testing.assert_array_equal(state["centers"], np.full((8, 4), 1.0, np.float32))
        else:
            np.testing.assert_array_equal(
                state["centers"], np.full((1024, 2048), float(step), np.float32)
            )
        assert state["step"] == step
        # The next save clears the leftovers of the interrupted one.
        ckpt.save(step + 100, {"centers": np.zeros((2, 2), np.float32)}, {"s": 0})
        assert not [name for name in os.listdir(directory) if "tmp" in name]
        assert ckpt.latest_step() == step + 100
