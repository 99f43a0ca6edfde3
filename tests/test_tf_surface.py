"""Issue 14: what TF 2.15 estimator users wrote (RunConfig, hooks, checkpoint_path,
input_fn(params), export arguments), interrupts that lose nothing, resume conflicts and
no temporary-directory litter."""

import gc
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import jaxkmeans

RNG = np.random.default_rng(0)
X = np.concatenate(
    [m + RNG.normal(size=(20, 2)) for m in ([0.0, 0.0], [8.0, 8.0], [0.0, 8.0])]
).astype(np.float32)[RNG.permutation(60)]
INIT = X[[0, 1, 2]].copy()
BATCHES = [X[0:20], X[20:40], X[40:60]]
K = 3


def make(tmp_path, name="m", **kw):
    kw.setdefault("initial_clusters", INIT)
    kw.setdefault("use_mini_batch", False)
    kw.setdefault("seed", 0)
    return jaxkmeans.KMeans(K, model_dir=tmp_path / name, **kw)


def step_dirs(model_dir):
    path = pathlib.Path(model_dir)
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


# ------------------------------------------------------------------ RunConfig


def test_run_config_tf_defaults_and_save_settings():
    default = jaxkmeans.RunConfig()
    assert default.save_checkpoints_secs == 600 and default.save_checkpoints_steps is None
    assert default.keep_checkpoint_max == 5 and default.model_dir is None
    assert default.tf_random_seed is None
    steps = jaxkmeans.RunConfig(save_checkpoints_steps=10)  # turns the 600 s default off
    assert steps.save_checkpoints_secs is None and steps.save_checkpoints_steps == 10
    secs = jaxkmeans.RunConfig(save_checkpoints_secs=30)
    assert secs.save_checkpoints_secs == 30 and secs.save_checkpoints_steps is None
    off = jaxkmeans.RunConfig(save_checkpoints_secs=None)
    assert off.save_checkpoints_secs is None and off.save_checkpoints_steps is None
    assert jaxkmeans.RunConfig(save_checkpoints_steps=5, save_checkpoints_secs=None)
    for secs_value in (600, 1):  # explicit, even TF's default value
        with pytest.raises(ValueError, match="save_checkpoints_steps.*save_checkpoints_secs"):
            jaxkmeans.RunConfig(save_checkpoints_steps=5, save_checkpoints_secs=secs_value)
    for bad in (0, -1, "60", True, float("nan")):
        with pytest.raises(ValueError, match="save_checkpoints_secs"):
            jaxkmeans.RunConfig(save_checkpoints_secs=bad)
    with pytest.raises((TypeError, ValueError), match="tf_random_seed"):
        jaxkmeans.RunConfig(tf_random_seed="1")
    # TF's replace()
    replaced = steps.replace(keep_checkpoint_max=2)
    assert replaced.save_checkpoints_steps == 10 and replaced.keep_checkpoint_max == 2
    assert steps.replace(save_checkpoints_secs=5).save_checkpoints_steps is None


def test_run_config_tf_arguments_warn_or_fail_by_name():
    with pytest.warns(UserWarning, match="log_step_count_steps, save_summary_steps") as record:
        config = jaxkmeans.RunConfig(
            model_dir="/tmp/x", save_summary_steps=100, log_step_count_steps=10, tf_random_seed=1
        )
    assert len(record) == 1
    assert config.model_dir == "/tmp/x" and config.tf_random_seed == 1
    ignored = dict.fromkeys(
        [
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
        ]
    )
    with pytest.warns(UserWarning, match="no meaning"):
        jaxkmeans.RunConfig(**ignored)
    with pytest.raises(TypeError, match="'save_checkpoint_steps'"):  # a typo: not ignored
        jaxkmeans.RunConfig(save_checkpoint_steps=5)


def test_run_config_model_dir_and_tf_random_seed(tmp_path):
    config = jaxkmeans.RunConfig(model_dir=str(tmp_path / "m"), tf_random_seed=7)
    km = jaxkmeans.KMeans(K, config=config, initial_clusters="kmeans_plus_plus")
    assert km.model_dir == str(tmp_path / "m")
    km.train(X, steps=2)
    assert jaxkmeans.latest_checkpoint(tmp_path / "m") is not None
    seeded = jaxkmeans.KMeans(
        K, model_dir=tmp_path / "s", seed=7, initial_clusters="kmeans_plus_plus"
    )
    seeded.train(X, steps=2)
    np.testing.assert_array_equal(km.cluster_centers(), seeded.cluster_centers())
    assert km.params["seed"] == 7
    # Both given and equal: fine; different: ValueError naming both, as TF.
    jaxkmeans.KMeans(K, model_dir=tmp_path / "m", config=config)
    with pytest.raises(ValueError, match="different values.*other.*m'"):
        jaxkmeans.KMeans(K, model_dir=tmp_path / "other", config=config)


def test_save_checkpoints_secs_saves_during_train(tmp_path, monkeypatch):
    # A fake clock: 10 s pass per reading, so with 25 s a save every third step or so.
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(jaxkmeans.estimator, "_clock", lambda: next(clock))
    config = jaxkmeans.RunConfig(save_checkpoints_secs=25, keep_checkpoint_max=None)
    km = make(tmp_path, use_mini_batch=True, config=config)
    km.train(BATCHES, steps=9)
    saved = step_dirs(km.model_dir)
    assert saved[-1] == 9 and 3 <= len(saved) < 9, saved
    monkeypatch.undo()
    # The default (600 s): only at the end of a quick train().
    km = make(tmp_path, "default", use_mini_batch=True)
    km.train(BATCHES, steps=9)
    assert step_dirs(km.model_dir) == [9]


# ------------------------------------------------------------------ train/predict/evaluate


@pytest.mark.parametrize("mini_batch", [False, True])
def test_hooks_see_every_step_and_can_stop(tmp_path, mini_batch):
    seen = []

    def hook(step, loss):
        seen.append((step, loss))
        return step == 4

    km = make(tmp_path, use_mini_batch=mini_batch)
    km.train(BATCHES, steps=10, hooks=[hook])
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert km.global_step == 4 and step_dirs(km.model_dir) == [4]  # the end-of-train save
    np.testing.assert_allclose([v for _, v in seen], [v for _, v in km.loss_history])
    assert all(isinstance(v, float) for _, v in seen)
    km.train(BATCHES, steps=2, hooks=lambda step, loss: None)  # one callable is fine
    assert km.global_step == 6
    with pytest.raises(TypeError, match="hooks.*SessionRunHook"):
        km.train(BATCHES, hooks=[object()])


def test_saving_listeners(tmp_path):
    calls = []

    class Listener:  # TF's CheckpointSaverListener methods
        def before_save(self, session, global_step_value):
            calls.append(("before", global_step_value))

        def after_save(self, session, global_step_value):
            calls.append(("after", global_step_value))

    config = jaxkmeans.RunConfig(save_checkpoints_steps=2)
    km = make(tmp_path, use_mini_batch=True, config=config)
    paths = []
    km.train(
        BATCHES,
        steps=3,
        saving_listeners=[Listener(), lambda step, path: paths.append((step, path))],
    )
    assert calls == [("before", 2), ("after", 2), ("before", 3), ("after", 3)]
    assert paths == [(2, os.path.join(km.model_dir, "2")), (3, km.latest_checkpoint())]


def test_predict_and_evaluate_with_checkpoint_path(tmp_path):
    config = jaxkmeans.RunConfig(save_checkpoints_steps=1, keep_checkpoint_max=None)
    km = make(tmp_path, config=config)
    km.train(X, steps=1)
    at_1 = km.cluster_centers()
    ckpt_1 = km.latest_checkpoint()
    km.train(X, steps=3)
    assert not np.array_equal(at_1, km.cluster_centers())
    old = make(tmp_path, "old")
    old.train(X, steps=1)
    expected = [p["cluster_index"] for p in old.predict(X)]
    got = list(km.predict(X, checkpoint_path=ckpt_1))
    assert [p["cluster_index"] for p in got] == expected
    result = km.evaluate(X, checkpoint_path=os.path.join(km.model_dir, "1"), name="at1")
    assert result["global_step"] == 1
    np.testing.assert_allclose(result["loss"], old.score(X), rtol=1e-6)
    assert km.evaluate(X)["global_step"] == 4
    # TF's positional order for evaluate: (input_fn, steps, hooks, checkpoint_path, name).
    assert km.evaluate(X, None, None, km.latest_checkpoint(), "last")["global_step"] == 4
    with pytest.raises(ValueError, match="checkpoint_path.*does not exist"):
        list(km.predict(X, checkpoint_path=tmp_path / "m" / "99"))
    other = jaxkmeans.KMeans(4, model_dir=tmp_path / "k4", initial_clusters=X[:4], seed=0)
    other.train(X, steps=1)
    with pytest.raises(ValueError, match="num_clusters=4"):
        km.evaluate(X, checkpoint_path=other.latest_checkpoint())
    # A model never trained can still use a checkpoint path.
    fresh = make(tmp_path, "fresh")
    assert fresh.evaluate(X, checkpoint_path=ckpt_1)["global_step"] == 1


def test_predict_and_evaluate_hooks(tmp_path):
    km = make(tmp_path)
    km.train(BATCHES)
    seen = []
    result = km.evaluate(BATCHES, hooks=[lambda i, loss: seen.append((i, loss)) or i == 2])
    assert [i for i, _ in seen] == [1, 2]
    assert result["loss"] == pytest.approx(seen[-1][1])
    assert result["loss"] == pytest.approx(km.evaluate(BATCHES, steps=2)["loss"])
    rows = []
    preds = list(km.predict(BATCHES, hooks=[lambda i, n: rows.append(n) or i == 1]))
    assert len(preds) == 20 and rows == [20]


def test_input_fn_takes_params_mode_and_config(tmp_path):
    calls = []

    def input_fn(params):
        calls.append(params)
        return X

    km = make(tmp_path)
    km.train(input_fn, steps=2)
    assert calls and calls[0]["num_clusters"] == K
    modes = []

    def with_mode(params, mode, config):
        modes.append((mode, config is km.config))
        return {"x": X[:, 0], "y": X[:, 1]}, None

    km.evaluate(with_mode)
    list(km.predict(with_mode))
    assert modes == [("eval", True), ("infer", True)]
    with pytest.raises(TypeError, match="input_fn"):
        km.train(lambda batch_size: X)


# ------------------------------------------------------------------ resume


def test_resume_conflicts_on_use_mini_batch_name_both_values(tmp_path):
    make(tmp_path, use_mini_batch=False).train(X, steps=2)
    with pytest.raises(ValueError, match="use_mini_batch=False.*use_mini_batch=True"):
        make(tmp_path, use_mini_batch=True)
    assert make(tmp_path, use_mini_batch=False).global_step == 2


def test_start_only_settings_are_ignored_with_one_warning(tmp_path):
    km = make(tmp_path, initial_clusters="kmeans_plus_plus", seed=1)
    km.train(X, steps=2)
    centers = km.cluster_centers()
    with pytest.warns(UserWarning) as record:
        resumed = make(tmp_path, initial_clusters="random", seed=5)
    assert len(record) == 1
    text = str(record[0].message)
    assert "initial_clusters='random'" in text and "'kmeans_plus_plus'" in text
    assert "seed=5" in text and "seed=1" in text and "ignored" in text
    assert resumed.global_step == 2 and resumed.params["seed"] == 1
    np.testing.assert_array_equal(resumed.cluster_centers(), centers)
    # Only the seed differs: one warning naming only it.
    with pytest.warns(UserWarning, match="seed=6") as record:
        make(tmp_path, initial_clusters="kmeans_plus_plus", seed=6)
    assert len(record) == 1 and "initial_clusters" not in str(record[0].message)
    # Defaults, or the same values: silent.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxkmeans.KMeans(K, model_dir=tmp_path / "m", use_mini_batch=False)
        make(tmp_path, initial_clusters="kmeans_plus_plus", seed=1)


# ------------------------------------------------------------------ temporary model_dir


def test_no_model_dir_creates_nothing_until_the_first_save():
    km = jaxkmeans.KMeans(K, initial_clusters=INIT, use_mini_batch=False, seed=0)
    path = km.model_dir
    try:
        assert os.path.isabs(path) and not os.path.exists(path)
        other = jaxkmeans.KMeans(K, initial_clusters=INIT, use_mini_batch=False, seed=0)
        assert other.model_dir != path and not os.path.exists(other.model_dir)
        assert km.latest_checkpoint() is None
        with pytest.warns(UserWarning, match="temporary directory") as record:
            km.train(X)
        assert len(record) == 1 and path in str(record[0].message)
        assert record[0].filename == __file__  # points at the caller
        assert km.model_dir == path and os.path.isdir(path)
        assert jaxkmeans.latest_checkpoint(path) == km.latest_checkpoint()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            km.train(X)  # warned once
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ interrupts


@pytest.mark.parametrize("mini_batch", [False, True])
def test_keyboard_interrupt_saves_the_last_completed_step(tmp_path, mini_batch):
    def hook(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    km = make(tmp_path, use_mini_batch=mini_batch)
    km.train(BATCHES, steps=2)
    with pytest.raises(KeyboardInterrupt):
        km.train(BATCHES, steps=100, hooks=[hook])
    assert km.global_step == 5
    assert step_dirs(km.model_dir) == [2, 5]
    resumed = make(tmp_path, use_mini_batch=mini_batch)
    assert resumed.global_step == 5
    resumed.train(BATCHES, max_steps=9)
    ref = make(tmp_path, "ref", use_mini_batch=mini_batch)
    ref.train(BATCHES, max_steps=9)
    np.testing.assert_array_equal(resumed.cluster_centers(), ref.cluster_centers())
    # Any other error goes back to the last checkpoint, not to the last step.
    other = make(tmp_path, "other", use_mini_batch=mini_batch)
    other.train(BATCHES, steps=2)
    with pytest.raises(ZeroDivisionError):
        other.train(BATCHES, steps=9, hooks=[lambda s, loss: s == 5 and 1 / 0 == 0 or None])
    assert other.global_step == 2 and step_dirs(other.model_dir) == [2]


def test_sigterm_during_train_raises_keyboard_interrupt_and_handlers_are_restored(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def hook(step, loss):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs before this returns

    km = make(tmp_path, use_mini_batch=True)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        km.train(BATCHES, steps=50, hooks=[hook])
    assert km.global_step == 3 and step_dirs(km.model_dir) == [3]
    assert {s: signal.getsignal(s) for s in before} == before
    # An application's own handler keeps working (called instead of the interrupt).
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        km.train(BATCHES, steps=3, hooks=[lambda s, loss: hook(3, loss) if s == 4 else None])
        assert got == [signal.SIGTERM] and km.global_step == 6
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Outside the main thread no handler is installed (and training works).
    errors = []
    thread = threading.Thread(
        target=lambda: errors.append(km.train(BATCHES, steps=1) and None),
    )
    thread.start()
    thread.join()
    assert errors == [None] and km.global_step == 7


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("mini_batch", [False, True])
def test_a_signal_whose_interrupt_is_lost_in_a_finalizer_still_stops_training(tmp_path, mini_batch):
    # Python ignores an exception raised inside __del__ (or a weakref callback); a signal
    # that arrives while one runs loses its KeyboardInterrupt. train() raises it again at
    # the next step boundary instead of running on to max_steps.
    class RaisesSignalWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, inside the finalizer

    def hook(step, loss):
        if step == 3:
            RaisesSignalWhenCollected()  # collected at once: its __del__ runs here

    km = make(tmp_path, use_mini_batch=mini_batch)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        km.train(BATCHES, steps=1000, hooks=[hook])
    assert km.global_step == 3 and step_dirs(km.model_dir) == [3]
    assert make(tmp_path, use_mini_batch=mini_batch).global_step == 3


@pytest.mark.parametrize("mini_batch", [True, False], ids=["mini_batch", "full_batch"])
def test_a_signal_inside_a_gc_callback_stops_training_without_a_traceback(
    tmp_path, mini_batch, capfd, monkeypatch
):
    # jaxlib runs a callback at every garbage collection; a KeyboardInterrupt raised in
    # it would be lost, and Python would print "Exception ignored ... Traceback" (the
    # CLI's interrupt test saw it). train() raises it at the next step boundary instead.
    armed = []

    def callback(phase, info):
        if armed and phase == "start":
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, inside the callback

    def hook(step, loss):
        if step == 3:
            armed.append(1)
            gc.collect()

    ignored = []  # what Python reports as "Exception ignored" (printed outside pytest)
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    gc.callbacks.append(callback)
    try:
        km = make(tmp_path, use_mini_batch=mini_batch)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            km.train(BATCHES, steps=1000, hooks=[hook])
    finally:
        gc.callbacks.remove(callback)
    assert km.global_step == 3 and step_dirs(km.model_dir) == [3]
    err = capfd.readouterr().err
    assert not ignored and "Traceback" not in err, (ignored, err)


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jaxkmeans

    model_dir, kwargs, max_steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[4])
    x = np.load(sys.argv[3])

    def hook(step, loss):
        print("step", step, flush=True)

    km = jaxkmeans.KMeans(model_dir=model_dir, **kwargs)
    try:
        km.train(np.split(x, 3), max_steps=max_steps, hooks=[hook])
    except KeyboardInterrupt:
        # On a line of its own: the signal may have cut a hook's print short.
        print("\\ninterrupted", km.global_step, flush=True)
        sys.exit(130)
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mini_batch", [True, False], ids=["mini_batch", "full_batch"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_at_a_random_moment_saves_and_resumes_bit_identically(tmp_path, mini_batch, sig):
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    where = f"(random seed {seed})"
    max_steps = 10**6
    stop_after = rng.randrange(3, 60)
    kwargs = dict(
        num_clusters=K, initial_clusters="kmeans_plus_plus", use_mini_batch=mini_batch, seed=9
    )
    model_dir = tmp_path / "m"
    np.save(tmp_path / "x.npy", X)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    args = [str(model_dir), json.dumps(kwargs), str(tmp_path / "x.npy"), str(max_steps)]
    stderr = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT_SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(180, proc.kill)  # bounded time whatever happens
    watchdog.start()
    reported, interrupted, sent = 0, None, False
    try:
        for line in proc.stdout:
            if not line.split():
                continue
            word, value = line.split()[0], line.split()[-1]
            if word == "step" and not sent:
                reported = int(value)
                if reported >= stop_after:
                    time.sleep(rng.random() * 0.02)
                    proc.send_signal(sig)
                    sent = True
            elif word == "interrupted":
                interrupted = int(value)
            assert word != "done", f"the run finished before the signal {where}"
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        stderr.close()
    where += "\n" + (tmp_path / "stderr.txt").read_text()[-3000:]
    assert proc.returncode == 130, f"exit {proc.returncode} {where}"
    assert interrupted is not None and interrupted >= reported >= stop_after, where

    resumed = jaxkmeans.KMeans(model_dir=model_dir, **kwargs)
    assert resumed.global_step == interrupted, where
    target = interrupted + 7
    resumed.train(BATCHES, max_steps=target)
    uninterrupted = jaxkmeans.KMeans(model_dir=tmp_path / "ref", **kwargs)
    uninterrupted.train(BATCHES, max_steps=target)
    np.testing.assert_array_equal(
        resumed.cluster_centers(), uninterrupted.cluster_centers(), err_msg=where
    )
    for name in ("cluster_counts", "working_clusters", "global_step", "prev_loss"):
        np.testing.assert_array_equal(
            resumed.get_variable_value(name), uninterrupted.get_variable_value(name), err_msg=where
        )
