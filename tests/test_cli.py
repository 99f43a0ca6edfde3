"""The `jaxkmeans` command line, end to end in subprocesses (`python -m jaxkmeans ...`).

Starting Python and importing jax costs seconds per process, so the commands run in
two concurrent rounds (the fits first, then everything that reads their models) and
the tests check the recorded results.
"""

import concurrent.futures
import inspect
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib

import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import cli
from jaxkmeans.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEANS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [10.0, 10.0, 5.0]])
PLOT_SIZE = (1100, 450)  # pixels: cli.PLOT_SIZE_INCHES at cli.PLOT_DPI
MINI_BATCH_STEPS = 40
SAVE_EVERY_STEPS, SAVE_MAX_STEPS = 3, 7
# The estimator's contract of issue 14 (interrupts save the last completed step, hooks,
# RunConfig(save_checkpoints_secs)): the tests that need it are skipped until it is there.
ESTIMATOR_SAVES_ON_INTERRUPT = "hooks" in inspect.signature(jaxkmeans.KMeans.train).parameters
RUN_CONFIG_HAS_SECS = "save_checkpoints_secs" in inspect.signature(jaxkmeans.RunConfig).parameters


def _env():
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))


def _run_all(commands, cwd):
    """Runs {name: argv} concurrently; {name: CompletedProcess}."""

    def run(argv):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxkmeans", *argv],
            capture_output=True,
            cwd=cwd,
            env=_env(),
            timeout=300,
        )
        # Decoded by hand: text mode would turn the progress bar's "\r" into "\n".
        proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
        return proc

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(run, commands.values())
        return dict(zip(commands, results, strict=True))


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data files: 400 points in 4 blobs in 3-D as .npy, .csv (header) and .txt."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 100)
    x = (MEANS[truth] + rng.normal(size=(400, 3))).astype(np.float32)
    perm = rng.permutation(400)
    x, truth = x[perm], truth[perm]
    np.save(d / "x.npy", x)
    np.save(d / "truth.npy", truth)
    with open(d / "x.csv", "w") as f:
        f.write("alpha, beta, gamma\n")
        f.writelines(", ".join(repr(float(v)) for v in row) + "\n" for row in x)
    np.savetxt(d / "x.txt", x)
    (d / "bad.csv").write_text("a,b,c\n1,2,3\n4,oops,6\n")
    (d / "narrow.txt").write_text("1 2\n3 4\n")
    (d / "empty_model").mkdir()
    return d


@pytest.fixture(scope="module")
def fits(work):
    """Round 1: a full-batch fit (progress bar forced on) and a mini-batch cosine fit."""
    return _run_all(
        {
            "full": ["fit", "x.npy", "--num-clusters", "4", "--model-dir", "m", "--seed", "0"]
            + ["--progress", "always"],
            "mini": ["fit", "x.npy", "-k", "4", "--model-dir", "mb", "--mini-batch"]
            + ["--batch-size", "50", "--metric", "cosine", "--init", "random", "--seed", "1"]
            + ["--max-steps", str(MINI_BATCH_STEPS), "--tolerance", "0"],
            "saves": ["fit", "x.npy", "-k", "4", "--model-dir", "saves", "--seed", "2"]
            + ["--max-steps", str(SAVE_MAX_STEPS), "--tolerance", "0"]
            + ["--save-every-steps", str(SAVE_EVERY_STEPS)],
        },
        work,
    )


ERRORS = {
    # name: (argv, exit status, part of the message)
    "missing_file": (["fit", "missing.npy", "-k", "2", "--model-dir", "e1"], 1, "does not exist"),
    "bad_numbers": (
        ["fit", "bad.csv", "-k", "2", "--model-dir", "e2"],
        1,
        "line 3, column 2 ('b'): 'oops' is not a number; choose the feature columns with --columns",
    ),
    "wrong_width": (["predict", "narrow.txt", "--model-dir", "m"], 1, "has 2 columns"),
    "unknown_metric": (
        ["fit", "x.npy", "-k", "2", "--model-dir", "e3", "--metric", "manhattan"],
        2,
        "invalid choice: 'manhattan'",
    ),
    "empty_model_dir": (["info", "--model-dir", "empty_model"], 1, "holds no checkpoint"),
}


@pytest.fixture(scope="module")
def runs(work, fits):
    """Round 2: everything that reads the trained models, and every error case."""
    _ok(fits["full"])
    _ok(fits["mini"])
    commands = {
        "predict_csv": ["predict", "x.csv", "--model-dir", "m", "--output", "labels.txt"],
        "info": ["info", "--model-dir", "m", "--centers"],
        "info_mb": ["info", "--model-dir", "mb"],
        "export": ["export", "--model-dir", "m", "--output", "exported"],
        "plot": ["plot", "--model-dir", "m", "x.npy", "--output", "clusters.png"],
    }
    commands.update({name: argv for name, (argv, _, _) in ERRORS.items()})
    return _run_all(commands, work)


def _same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_fit_prints_a_json_summary_and_shows_progress(work, fits):
    proc = _ok(fits["full"])
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["num_clusters"] == 4 and summary["dims"] == 3 and summary["rows"] == 400
    assert summary["metric"] == "squared_euclidean" and summary["mini_batch"] is False
    assert 1 <= summary["global_step"] < summary["max_steps"] == 300
    assert summary["stopped"] == "tolerance"
    assert summary["steps_run"] == summary["global_step"]
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["score"])
    assert summary["model_dir"] == str((work / "m").resolve())
    # The progress bar: redrawn with carriage returns, with step and loss, then a newline.
    assert "\r" in proc.stderr and proc.stderr.endswith("\n")
    last = proc.stderr.rstrip("\n").split("\r")[-1]
    assert f"step {summary['global_step']}/300" in last and "loss" in last
    centers = jaxkmeans.load_variable(work / "m", "clusters")
    nearest = np.abs(MEANS[:, None] - centers[None]).max(axis=-1)  # (mean, center)
    assert sorted(nearest.argmin(axis=1)) == [0, 1, 2, 3]
    assert nearest.min(axis=1).max() < 0.3


def test_fit_mini_batch_cosine_and_resume(work, fits, capsys):
    proc = _ok(fits["mini"])
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    summary = json.loads(proc.stdout)
    assert summary["mini_batch"] is True and summary["metric"] == "cosine"
    assert summary["batch_size"] == 50 and summary["init"] == "random"
    assert summary["global_step"] == MINI_BATCH_STEPS and summary["stopped"] == "max_steps"
    argv = ["fit", work / "x.npy", "-k", 4, "--model-dir", work / "mb", "--mini-batch"]
    argv += ["--batch-size", 50, "--metric", "cosine", "--max-steps", MINI_BATCH_STEPS + 8]
    assert cli.main([str(a) for a in argv]) == 0  # in process
    out, err = capsys.readouterr()
    assert err == ""
    resumed = json.loads(out)
    assert resumed["global_step"] == MINI_BATCH_STEPS + 8 and resumed["steps_run"] == 8
    assert resumed["seed"] == summary["seed"] == 1  # kept in the checkpoint


def test_predict_from_csv_txt_and_npy_agree_with_the_truth(work, runs, capsys):
    _ok(runs["predict_csv"])
    from_csv = np.loadtxt(work / "labels.txt", dtype=np.int64)  # header row skipped
    # In process: whitespace-separated .txt to stdout, and .npy to an .npy file.
    model = ["--model-dir", str(work / "m")]
    assert cli.main(["predict", str(work / "x.txt"), *model]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("\n")
    from_txt = np.array(out.split(), dtype=np.int64)
    assert cli.main(["predict", str(work / "x.npy"), *model, "-o", str(work / "labels.npy")]) == 0
    assert capsys.readouterr() == ("", "")
    from_npy = np.load(work / "labels.npy")
    assert from_npy.dtype == np.int32 and from_csv.shape == (400,)
    np.testing.assert_array_equal(from_csv, from_txt)
    np.testing.assert_array_equal(from_csv, from_npy)
    assert _same_partition(from_csv, np.load(work / "truth.npy"))


def test_info_is_json_with_the_model(runs, fits):
    info = json.loads(_ok(runs["info"]).stdout)
    fitted = json.loads(fits["full"].stdout)
    assert info["num_clusters"] == 4 and info["dims"] == 3
    assert info["metric"] == "squared_euclidean"
    assert info["global_step"] == fitted["global_step"]
    assert info["loss"] == pytest.approx(fitted["loss"])
    steps = [s for s, _ in info["loss_history"]]
    assert steps == list(range(1, fitted["global_step"] + 1))[-cli.INFO_HISTORY :]
    assert info["history_length"] == fitted["global_step"]
    assert np.asarray(info["cluster_centers"]).shape == (4, 3)


def test_export_loads_and_predicts_like_the_cli(work, runs):
    out = json.loads(_ok(runs["export"]).stdout)
    assert pathlib.Path(out["path"]).parent == (work / "exported").resolve()
    predict = jaxkmeans.load_exported(out["path"])
    labels = predict(np.load(work / "x.npy"))["cluster_index"]
    np.testing.assert_array_equal(labels, np.load(work / "labels.npy"))


def test_plot_writes_a_png(work, runs):
    _ok(runs["plot"])
    data = (work / "clusters.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == PLOT_SIZE
    assert PLOT_SIZE == tuple(round(v * cli.PLOT_DPI) for v in cli.PLOT_SIZE_INCHES)


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_one_line_without_traceback(work, runs, name):
    _, status, message = ERRORS[name]
    proc = runs[name]
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jaxkmeans: error: ") and message in lines[0]
    assert proc.stdout == ""


def _main_error(capsys, argv):
    """Runs cli.main in process; returns its one stderr line (asserts exit status 1)."""
    assert cli.main([str(a) for a in argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("jaxkmeans: error: ")
    return err


def test_more_errors_in_process(work, runs, capsys, monkeypatch):
    model = work / "m"
    before = jaxkmeans.latest_checkpoint(model)
    assert "does not exist" in _main_error(capsys, ["info", "--model-dir", work / "nowhere"])
    err = _main_error(capsys, ["fit", work / "x.npy", "-k", "3", "--model-dir", model])
    assert "--num-clusters 3 does not fit the model in" in err and "has 4 clusters" in err
    err = _main_error(capsys, ["fit", work / "x.npy", "-k", "401", "--model-dir", work / "e4"])
    assert "num_clusters=401 is more than" in err
    err = _main_error(capsys, ["fit", work / "x.npy", "-k", "2", "--model-dir", work / "x.npy"])
    assert "is not a directory" in err
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    err = _main_error(capsys, ["plot", "--model-dir", model, work / "x.npy", "-o", "no.png"])
    assert "needs matplotlib" in err and "jaxkmeans[plot]" in err
    # Failed fits wrote nothing: no new model dir, the trained model untouched.
    for d in ("e1", "e2", "e3", "e4"):
        assert not (work / d).exists()
    assert jaxkmeans.latest_checkpoint(model) == before


# ------------------------------------------------------------------ in-process checks


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("ragged.csv", "1,2,3\n4,5\n", "line 2 has 2 values; expected 3"),
        ("nan.csv", "x,y\n1,2\nnan,3\n", None),
        ("header_only.csv", "x,y\n", "has no data rows"),
        ("junk.npy", "not an array", "is not a readable .npy array"),
    ],
)
def test_load_data_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    if message is None:  # NaN parses; it is reported when the batches are read
        x = cli.load_data(tmp_path / name)
        with pytest.raises(cli.CommandError, match=r"missing, NaN or inf value \(data row 2\)"):
            list(cli._batches(x, "DATA", None)())
        return
    with pytest.raises(cli.CommandError, match=message):
        cli.load_data(tmp_path / name)


def test_load_data_formats(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "a.txt").write_text("# comment\n\n" + "\n".join(" \t".join(map(str, r)) for r in x))
    np.testing.assert_array_equal(cli.load_data(tmp_path / "a.txt"), x)
    (tmp_path / "b.csv").write_text("u,v,w\n" + "\n".join(",".join(map(str, r)) for r in x))
    np.testing.assert_array_equal(cli.load_data(tmp_path / "b.csv"), x)
    np.save(tmp_path / "c.npy", x[:, 0].astype(np.int64))
    assert cli.load_data(tmp_path / "c.npy").shape == (4, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["fit", "x.npy", "-k", "0", "--model-dir", "d"], "expected an int >= 1; got 0"),
        (["fit", "x.npy", "-k", "2", "--model-dir", "d", "--init", "kmeans++"], "--init"),
        (["fit", "x.npy", "-k", "2", "--model-dir", "d", "--tolerance", "-1"], "--tolerance"),
        (["predict", "x.npy"], "--model-dir"),
        (
            ["fit", "x.npy", "-k", "2", "--model-dir", "d"]
            + ["--save-every-secs", "5", "--save-every-steps", "5"],
            "not allowed with argument",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("jaxkmeans: error: ") and message in err[0]


def test_console_script_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["jaxkmeans"].partition(":")
    assert (module, func) == ("jaxkmeans.cli", "main")
    assert callable(getattr(cli, func))


# ------------------------------------------------------------------ saving and resuming


def test_fit_saves_every_n_steps(work, fits):
    summary = json.loads(_ok(fits["saves"]).stdout)
    assert summary["global_step"] == SAVE_MAX_STEPS
    with Checkpointer(work / "saves", max_to_keep=None) as ckpt:
        steps = ckpt.steps()
    every = list(range(SAVE_EVERY_STEPS, SAVE_MAX_STEPS + 1, SAVE_EVERY_STEPS))
    assert steps == sorted(set(every) | {SAVE_MAX_STEPS})


@pytest.mark.skipif(not RUN_CONFIG_HAS_SECS, reason="needs RunConfig(save_checkpoints_secs)")
def test_save_options_make_the_run_config():
    parser = cli.build_parser()
    base = ["fit", "x.npy", "-k", "2", "--model-dir", "d"]
    config = cli._run_config(parser.parse_args(base))
    assert config.save_checkpoints_secs == 600 and config.save_checkpoints_steps is None
    config = cli._run_config(parser.parse_args([*base, "--save-every-secs", "30"]))
    assert config.save_checkpoints_secs == 30 and config.save_checkpoints_steps is None
    config = cli._run_config(parser.parse_args([*base, "--save-every-steps", "7"]))
    assert config.save_checkpoints_steps == 7 and config.save_checkpoints_secs is None


def test_resume_errors_on_what_defines_the_model(work, runs, capsys):
    before = {d: jaxkmeans.latest_checkpoint(work / d) for d in ("m", "mb")}
    full = ["fit", work / "x.npy", "-k", "4", "--model-dir", work / "m"]
    err = _main_error(capsys, [*full, "--mini-batch"])
    assert "--mini-batch does not fit the model in" in err and "trained full batch" in err
    err = _main_error(capsys, [*full, "--metric", "cosine"])
    assert "--metric cosine does not fit" in err and "--metric squared_euclidean" in err
    err = _main_error(capsys, ["fit", work / "narrow.txt", "-k", "4", "--model-dir", work / "m"])
    assert "has 2 columns" in err and "has 3 features" in err
    mini = ["fit", work / "x.npy", "-k", "4", "--model-dir", work / "mb", "--metric", "cosine"]
    err = _main_error(capsys, mini)
    assert "was trained with --mini-batch; add --mini-batch" in err
    assert {d: jaxkmeans.latest_checkpoint(work / d) for d in before} == before


def test_resume_ignores_start_settings_and_a_converged_fit_does_nothing(work, runs, capsys):
    model = work / "m"
    fitted = json.loads(_ok(runs["info"]).stdout)
    with Checkpointer(model, max_to_keep=None) as ckpt:
        steps = ckpt.steps()
    argv = ["fit", work / "x.npy", "-k", "4", "--model-dir", model, "--seed", "7"]
    argv += ["--init", "random"]
    assert cli.main([str(a) for a in argv]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith("jaxkmeans: warning: --init random IGNORED: the model in")
    assert "was started with --init kmeans_plus_plus" in lines[0]
    assert lines[1].startswith("jaxkmeans: warning: --seed 7 IGNORED:")
    assert "keeps its seed 0" in lines[1]
    assert "has already converged at step" in lines[2] and "nothing to train" in lines[2]
    summary = json.loads(out)
    assert summary["steps_run"] == 0 and summary["global_step"] == fitted["global_step"]
    assert summary["seed"] == 0 and summary["init"] == "kmeans_plus_plus"
    assert summary["loss"] == pytest.approx(fitted["loss"])
    with Checkpointer(model, max_to_keep=None) as ckpt:
        assert ckpt.steps() == steps  # no step and no checkpoint added


# ------------------------------------------------------------------ one meaning of loss


def test_loss_names_are_the_same_everywhere(work, fits, runs):
    # Full batch: loss = sum over all 400 rows at the last step; mean_loss = loss / rows.
    fitted = json.loads(fits["full"].stdout)
    info = json.loads(_ok(runs["info"]).stdout)
    assert fitted["mode"] == info["mode"] == "full_batch"
    assert fitted["mean_loss"] == pytest.approx(fitted["loss"] / 400, rel=1e-6)
    assert info["mean_loss"] == pytest.approx(info["loss"] / 400, rel=1e-6)
    assert info["loss_history"][-1] == [info["global_step"], pytest.approx(info["loss"])]
    assert "mean_loss_history" not in info
    # score (sum over all rows, with the final centers) is at most the last step's loss.
    assert fitted["score"] <= fitted["loss"] * (1 + 1e-5)
    # Mini-batch: loss = sum over the step's batch of 50 rows; mean_loss = loss / 50.
    mini = json.loads(fits["mini"].stdout)
    info = json.loads(_ok(runs["info_mb"]).stdout)
    for out in (mini, info):
        assert out["mode"] == "mini_batch"
        assert out["mean_loss"] == pytest.approx(out["loss"] / 50, rel=1e-5)
    assert info["mean_loss_history"][-1] == [info["global_step"], pytest.approx(info["mean_loss"])]
    assert "loss_history" not in info
    assert len(info["mean_loss_history"]) == cli.INFO_HISTORY
    assert info["history_length"] == info["global_step"]


def test_info_history_flag_prints_all(work, runs, capsys):
    assert cli.main(["info", "--model-dir", str(work / "mb"), "--history"]) == 0
    info = json.loads(capsys.readouterr().out)
    steps = [s for s, _ in info["mean_loss_history"]]
    assert steps == list(range(1, info["global_step"] + 1))


# ------------------------------------------------------------------ init from the whole file


def test_full_batch_init_samples_the_whole_file(tmp_path, capsys):
    """The first batch holds one cluster only: with --batch-size the init must still see
    all of them (a sample of the whole file), and the fit equals the one-batch fit."""
    means = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    rng = np.random.default_rng(3)
    x = np.concatenate([m + rng.normal(size=(1500, 2)) for m in means]).astype(np.float32)
    np.save(tmp_path / "sorted.npy", x)  # rows sorted by cluster
    base = ["fit", str(tmp_path / "sorted.npy"), "-k", "4", "--seed", "0"]
    results = {}
    for name, extra in (("one_batch", []), ("batches", ["--batch-size", "1500"])):
        assert cli.main([*base, "--model-dir", str(tmp_path / name), *extra]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        results[name] = json.loads(out)
    assert results["batches"]["init_sample_rows"] == 6000  # min(rows, max(10000, 100 k))
    assert results["batches"]["score"] == pytest.approx(results["one_batch"]["score"], rel=0.01)
    # A resume with the same command says nothing about --init (it was used).
    argv = [*base, "--model-dir", str(tmp_path / "batches"), "--batch-size", "1500"]
    assert cli.main([*argv, "--init", "kmeans_plus_plus"]) == 0
    out, err = capsys.readouterr()
    assert "IGNORED" not in err
    info = json.loads(_capture_main(capsys, ["info", "--model-dir", str(tmp_path / "batches")]))
    assert info["init"] == "kmeans_plus_plus"


def _capture_main(capsys, argv):
    assert cli.main(argv) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------ interrupts


def _popen(argv, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "jaxkmeans", *map(str, argv)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _interrupt_after_progress(argv, cwd, sig, min_step, timeout=120):
    """Starts a fit, sends `sig` once its progress bar shows a step >= min_step; returns
    (exit status, stderr, the last step it reported before the signal)."""
    proc = _popen(argv, cwd)
    chunks = []
    # read1, not readline: the progress bar is redrawn with "\r", without newlines.
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b""))
    )
    reader.start()
    deadline = time.monotonic() + timeout
    reported = None
    try:
        while time.monotonic() < deadline:
            text = b"".join(chunks).decode()
            steps = [int(s) for s in re.findall(r"step (\d+)/", text)]
            if steps and steps[-1] >= min_step:
                reported = steps[-1]
                break
            assert proc.poll() is None, f"the fit ended before the signal: {text}"
            time.sleep(0.02)
        assert reported is not None, "no progress within the time limit"
        proc.send_signal(sig)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    return status, b"".join(chunks).decode(), reported


@pytest.mark.slow
@pytest.mark.skipif(not ESTIMATOR_SAVES_ON_INTERRUPT, reason="needs the estimator of issue 14")
def test_sigint_and_sigterm_save_the_last_step_and_resume_exactly(tmp_path, capsys):
    """A fit interrupted by SIGINT, resumed and interrupted by SIGTERM, then resumed to
    the end, gives the centers of an uninterrupted fit; each interrupt saves the last
    completed step (a resumed model is not set back to where it was resumed from)."""
    rng = np.random.default_rng(0)
    means = rng.normal(scale=4.0, size=(8, 4))
    x = means[rng.integers(0, 8, 20_000)] + rng.normal(size=(20_000, 4))
    np.save(tmp_path / "big.npy", x.astype(np.float32))
    steps = 1000  # a few seconds of steps (after seconds of start-up)
    argv = ["fit", "big.npy", "-k", "8", "--seed", "0", "--max-steps", steps]
    argv += ["--tolerance", "0", "--batch-size", "5000"]
    reference = _popen([*argv, "--model-dir", "ref", "--progress", "never"], tmp_path)
    try:
        run = [*argv, "--model-dir", "run", "--progress", "always"]
        message = re.compile(
            r"jaxkmeans: interrupted at step (\d+); saved step \1 to "
            + re.escape(str(tmp_path / "run"))
            + r" \(resume with the same command\)$"
        )
        saved = 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            status, err, reported = _interrupt_after_progress(run, tmp_path, sig, saved + 3)
            assert status == 130, err
            assert "Traceback" not in err
            last = err.rstrip("\n").splitlines()[-1]
            match = message.search(last)
            assert match, err
            assert int(match.group(1)) >= reported > saved
            saved = int(match.group(1))
            assert saved < steps
            info = _capture_main(capsys, ["info", "--model-dir", str(tmp_path / "run")])
            assert json.loads(info)["global_step"] == saved
        final = subprocess.run(
            [sys.executable, "-m", "jaxkmeans", *map(str, run)],
            capture_output=True,
            cwd=tmp_path,
            env=_env(),
            timeout=300,
        )
        assert final.returncode == 0, final.stderr
        summary = json.loads(final.stdout)
        assert summary["global_step"] == steps and summary["steps_run"] == steps - saved
        assert reference.wait(timeout=300) == 0, reference.stderr.read()
    finally:
        if reference.poll() is None:
            reference.kill()
        reference.stdout.close()
        reference.stderr.close()
    np.testing.assert_array_equal(
        jaxkmeans.load_variable(tmp_path / "run", "clusters"),
        jaxkmeans.load_variable(tmp_path / "ref", "clusters"),
    )


def test_internal_errors_keep_their_traceback_user_errors_are_one_line(
    tmp_path, capsys, monkeypatch
):
    from jaxkmeans import cli

    def numpy_bug(args):
        np.zeros(3).reshape(2, 2)  # a ValueError raised inside numpy: an internal error

    def bad_input(args):
        jaxkmeans.assign(np.zeros((3, 2), np.float32), np.zeros((2, 5), np.float32))

    def as_if_in(module, body):
        """A `_cmd_info` running `body` as code of `module`'s file (as a bug there would)."""
        namespace: dict = {}
        exec(compile(f"def _cmd_info(args):\n    {body}\n", module.__file__, "exec"), namespace)
        return namespace["_cmd_info"]

    argv = ["info", "--model-dir", str(tmp_path)]
    internal = [
        (numpy_bug, ValueError, "reshape"),
        # raised in cli.py itself: the CLI's own checks raise CommandError, so a bug
        (as_if_in(cli, "raise ValueError('a bug in cli.py')"), ValueError, "a bug in cli.py"),
        # an operation that fails in library code, not one of its `raise` checks
        (as_if_in(jaxkmeans.fitting, "int('x')"), ValueError, "invalid literal"),
        (as_if_in(jaxkmeans.fitting, "len(None)"), TypeError, "NoneType"),
    ]
    for bug, error, match in internal:
        monkeypatch.setattr(cli, "_cmd_info", bug)
        with pytest.raises(error, match=match):
            cli.main(argv)
        assert "jaxkmeans: error:" not in capsys.readouterr().err
    a_check = as_if_in(jaxkmeans.fitting, "raise ValueError('columns')")
    for check in [bad_input, a_check]:
        monkeypatch.setattr(cli, "_cmd_info", check)
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("jaxkmeans: error:") and "columns" in err
        assert "Traceback" not in err and len(err.splitlines()) == 1


def test_an_internal_error_prints_its_traceback(tmp_path):
    """End to end: an unexpected ValueError raised in cli.py prints a traceback and exits
    non-zero, not a one-line ``jaxkmeans: error``."""
    script = tmp_path / "run_cli.py"
    script.write_text(
        "import sys\n"
        "from jaxkmeans import cli\n"
        "code = 'def _cmd_info(args):\\n    raise ValueError(\"internal\")\\n'\n"
        "exec(compile(code, cli.__file__, 'exec'), vars(cli))\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, str(script), "info", "--model-dir", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: internal" in proc.stderr
    assert "jaxkmeans: error:" not in proc.stderr


# ------------------------------------------------------------------ data files (issue 13)

# Values that every parser reads exactly (multiples of 1/4), 3 features.
GRID = (np.arange(30, dtype=np.float32).reshape(10, 3) - 7) / 4


@pytest.fixture(params=["pyarrow", "numpy"])
def reader(request, monkeypatch):
    """Each text test runs with pyarrow's CSV reader and with numpy's (no pyarrow)."""
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow")
    else:
        monkeypatch.setattr(cli, "_pyarrow", lambda: None)
    return request.param


def _csv(rows, sep=",", quote=False):
    q = '"' if quote else ""
    return "\n".join(sep.join(f"{q}{v!r}{q}" for v in map(float, row)) for row in rows) + "\n"


def _write_formats(d):
    """GRID in every text flavour: {file name: extra read_table kwargs}."""
    import bz2
    import gzip
    import lzma

    (d / "plain.csv").write_text("x,y,z\n" + _csv(GRID))
    (d / "quoted.csv").write_text('"x","y","z"\n' + _csv(GRID, quote=True))
    (d / "spaced.csv").write_text("x, y, z\n" + _csv(GRID, sep=" , "))
    (d / "tabs.tsv").write_text("x\ty\tz\n" + _csv(GRID, sep="\t"))
    (d / "semi.txt").write_text("x;y;z\n" + _csv(GRID, sep=";"))
    (d / "pipe.csv").write_text("x|y|z\n" + _csv(GRID, sep="|"))
    (d / "white.txt").write_text("# a comment\n\n" + _csv(GRID, sep=" \t "))
    (d / "bom.csv").write_bytes(b"\xef\xbb\xbf" + ("x,y,z\n" + _csv(GRID)).encode())
    (d / "crlf.csv").write_bytes(("x,y,z\n" + _csv(GRID)).replace("\n", "\r\n").encode())
    (d / "comments.csv").write_text(
        "# made by hand\nx,y,z\n"
        + _csv(GRID[:4])
        + "# half way\n\n"
        + _csv(GRID[4:6])
        + "# a, comment, with commas\n"
        + _csv(GRID[6:])
    )
    with gzip.open(d / "zipped.csv.gz", "wt") as f:
        f.write("x,y,z\n" + _csv(GRID))
    with bz2.open(d / "zipped.tsv.bz2", "wt") as f:
        f.write(_csv(GRID, sep="\t"))
    with lzma.open(d / "zipped.csv.xz", "wt") as f:
        f.write("x,y,z\n" + _csv(GRID))
    np.save(d / "array.npy", GRID)
    return {
        "plain.csv": {},
        "quoted.csv": {},
        "spaced.csv": {},
        "tabs.tsv": {},
        "semi.txt": {},
        "pipe.csv": {"delimiter": "|"},
        "white.txt": {},
        "bom.csv": {},
        "crlf.csv": {},
        "comments.csv": {},
        "zipped.csv.gz": {},
        "zipped.tsv.bz2": {},
        "zipped.csv.xz": {},
        "array.npy": {},
    }


def test_every_text_flavour_reads_the_same_numbers(tmp_path, reader, capsys):
    for file, kwargs in _write_formats(tmp_path).items():
        table = cli.read_table(tmp_path / file, **kwargs)
        np.testing.assert_array_equal(table.array, GRID, err_msg=file)
        assert table.array.dtype == (GRID.dtype if file.endswith(".npy") else np.float32)
        named = file not in ("white.txt", "zipped.tsv.bz2", "array.npy")
        assert table.names == (["x", "y", "z"] if named else None), file
        assert table.columns == [0, 1, 2]
    assert capsys.readouterr() == ("", "")  # no notes: no pandas index here


def test_reads_in_blocks_and_names_the_bad_line_after_the_first_block(
    tmp_path, reader, monkeypatch
):
    """Blocks much smaller than the file: the rows come back whole and in order, and
    errors past the first block still name their line."""
    monkeypatch.setattr(cli, "READ_BATCH_ROWS", 7)
    monkeypatch.setattr(cli, "ARROW_BLOCK_BYTES", 256)
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3) / 8
    (tmp_path / "big.csv").write_text("a,b,c\n" + _csv(x))
    np.testing.assert_array_equal(cli.load_data(tmp_path / "big.csv"), x)
    with_gap = "a,b,c\n" + _csv(x[:900]) + "1.0,,3.0\n" + _csv(x[900:])
    (tmp_path / "gap.csv").write_text(with_gap)
    with pytest.raises(cli.CommandError, match=r"line 902, column 2 \('b'\) is empty"):
        cli.load_data(tmp_path / "gap.csv")
    (tmp_path / "word.csv").write_text("a,b,c\n" + _csv(x[:950]) + "1.0,2.0,many\n")
    with pytest.raises(cli.CommandError, match=r"line 952, column 3 \('c'\): 'many' is not"):
        cli.load_data(tmp_path / "word.csv")
    (tmp_path / "short.csv").write_text("a,b,c\n" + _csv(x[:500]) + "1.0,2.0\n" + _csv(x[:9]))
    with pytest.raises(cli.CommandError, match="line 502 has 2 values; expected 3"):
        cli.load_data(tmp_path / "short.csv")


def test_row_buffer_grows_and_trims():
    rows = cli._Rows(2, 3)
    for i in range(10):
        rows.reserve(2)[:] = i
    out = rows.result()
    assert out.shape == (20, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[::2, 0], np.arange(10))
    empty = cli._Rows(2, 100)
    empty.reserve(1)[:] = 5
    assert empty.result().shape == (1, 2)


def test_pandas_index_column_is_skipped_with_a_note(tmp_path, reader, capsys):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(GRID, columns=["a", "b", "c"], index=np.arange(10) * 7)
    df.to_csv(tmp_path / "pandas.csv")  # header ",a,b,c", the index first
    table = cli.read_table(tmp_path / "pandas.csv")
    np.testing.assert_array_equal(table.array, GRID)
    assert table.names == ["a", "b", "c"] and table.columns == [1, 2, 3]
    err = capsys.readouterr().err
    assert err.startswith("jaxkmeans: note: DATA") and "the first column has no name" in err
    assert "index pandas' to_csv writes" in err and len(err.splitlines()) == 1
    # Read back and written again: "Unnamed: 0"; integer column names: ",0,1,2".
    pd.read_csv(tmp_path / "pandas.csv").to_csv(tmp_path / "again.csv", index=False)
    pd.DataFrame(GRID).to_csv(tmp_path / "numbered.csv")
    for file, names in (("again.csv", ["a", "b", "c"]), ("numbered.csv", ["0", "1", "2"])):
        table = cli.read_table(tmp_path / file)
        np.testing.assert_array_equal(table.array, GRID, err_msg=file)
        assert table.names == names
        assert "not used as a feature" in capsys.readouterr().err
    # Chosen columns: no guessing, no note (position 0 is the index: asked for, given).
    table = cli.read_table(tmp_path / "pandas.csv", columns=["0", "c"])
    np.testing.assert_array_equal(table.array[:, 0], np.arange(10) * 7)
    assert capsys.readouterr().err == ""


def test_columns_by_name_position_and_range(tmp_path, reader):
    full = np.column_stack([np.arange(10, dtype=np.float32), GRID])
    lines = [f"{i},{a},{b},{c},s{i}" for i, (a, b, c) in enumerate(GRID.tolist())]
    (tmp_path / "d.csv").write_text("id,a,b,c,label\n" + "\n".join(lines) + "\n")

    def read(cols):
        return cli.read_table(tmp_path / "d.csv", columns=cols)

    for cols, picked in (
        (["a", "b", "c"], [1, 2, 3]),
        (["1:4"], [1, 2, 3]),
        (["c", "1"], [3, 1]),
        (["-2", "a"], [3, 1]),
        ([":2"], [0, 1]),
    ):
        table = read(cols)
        assert table.columns == picked, cols
        np.testing.assert_array_equal(table.array, full[:, picked])
        assert table.names == [["id", "a", "b", "c"][i] for i in picked]
    for cols, message in (
        (["d"], r"--columns 'd': DATA '.*d.csv' has no such column; it has 'id', 'a', 'b'"),
        (["9"], "has 5 columns \\(positions 0 to 4\\)"),
        (["a", "1"], "names a column twice"),
        (["7:9"], "picks no column"),
        (["label"], r"column 5 \('label'\): 's0' is not a number"),
    ):
        with pytest.raises(cli.CommandError, match=message):
            read(cols)


def test_columns_of_npy_files_are_positions(tmp_path):
    np.save(tmp_path / "x.npy", GRID)
    table = cli.read_table(tmp_path / "x.npy", columns=["1:3"])
    assert isinstance(table.array, np.memmap)  # a contiguous pick stays memory-mapped
    np.testing.assert_array_equal(table.array, GRID[:, 1:3])
    np.testing.assert_array_equal(
        cli.load_data(tmp_path / "x.npy", columns=["2", "0"]), GRID[:, [2, 0]]
    )
    with pytest.raises(cli.CommandError, match="has no column names; give 0-based positions"):
        cli.read_table(tmp_path / "x.npy", columns=["a"])
    with pytest.raises(cli.CommandError, match="--delimiter only applies to text files"):
        cli.read_table(tmp_path / "x.npy", delimiter=";")


def test_parquet_reads_numeric_columns_and_skips_the_pandas_index(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(GRID, columns=["a", "b", "c"], index=np.arange(10) + 100)
    df["n"] = np.arange(10)  # int64: numbers too
    df.to_parquet(tmp_path / "x.parquet")  # the index as column __index_level_0__
    table = cli.read_table(tmp_path / "x.parquet")
    assert table.names == ["a", "b", "c", "n"] and table.array.dtype == np.float32
    np.testing.assert_array_equal(table.array, np.column_stack([GRID, np.arange(10)]))
    assert capsys.readouterr().err == ""  # pandas marked its index: nothing to guess
    df["s"] = "word"
    df.to_parquet(tmp_path / "s.pq")
    with pytest.raises(
        cli.CommandError, match="column 's' holds (large_)?string, not numbers; choose"
    ):
        cli.read_table(tmp_path / "s.pq")
    table = cli.read_table(tmp_path / "s.pq", columns=["c", "a"])
    np.testing.assert_array_equal(table.array, GRID[:, [2, 0]])
    df.iloc[3, 0] = None  # a missing value: reported with its row when batches are read
    df.to_parquet(tmp_path / "gap.parquet")
    x = cli.load_data(tmp_path / "gap.parquet", columns=["a"])
    with pytest.raises(cli.CommandError, match=r"missing, NaN or inf value \(data row 4\)"):
        list(cli._batches(x, "DATA", None)())


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(cli, "_pyarrow", lambda: None)
    with pytest.raises(cli.CommandError, match=r"needs pyarrow; .*jaxkmeans\[parquet\]"):
        cli.read_table(tmp_path / "x.parquet")


class _Stdin:
    def __init__(self, data: bytes):
        self.buffer = __import__("io").BytesIO(data)


def test_stdin_takes_text_compressed_text_npy_and_parquet(tmp_path, reader, monkeypatch):
    import gzip
    import io

    npy = io.BytesIO()
    np.save(npy, GRID)
    inputs = {
        "csv": ("x,y,z\n" + _csv(GRID)).encode(),
        "whitespace": _csv(GRID, sep=" ").encode(),
        "gzip": gzip.compress(_csv(GRID, sep="\t").encode()),
        "npy": npy.getvalue(),
    }
    if reader == "pyarrow":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({n: GRID[:, i] for i, n in enumerate("xyz")}), sink)
        inputs["parquet"] = sink.getvalue()
    for kind, data in inputs.items():
        monkeypatch.setattr(sys, "stdin", _Stdin(data))
        table = cli.read_table("-")
        np.testing.assert_array_equal(table.array, GRID, err_msg=kind)
        assert table.name == "DATA '-' (standard input)"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("ragged.csv", "1,2,3\n4,5\n", "line 2 has 2 values; expected 3"),
        ("gap.csv", "x,y\n1,2\n3,\n", r"line 3, column 2 \('y'\) is empty \(a missing value\)"),
        ("word.tsv", "1\t2\n3\tfour\n", "line 2, column 2: 'four' is not a number.$"),
        ("header_only.csv", "x,y\n", "has no data rows"),
        ("comments_only.txt", "# nothing\n\n", "has no data rows"),
        ("latin1.csv", b"x,\xe9\n1,2\n", "is not a text file of numbers"),
        ("data.json", "[1, 2]", "must be .npy, .parquet, .csv, .tsv or .txt"),
        ("data.csv.zip", "", r"got suffix '.csv.zip'"),
        ("junk.npy", "not an array", "is not a readable .npy array"),
        ("strings.npy", np.array(["a", "b"]), "must hold numbers; got dtype <U1"),
        ("cube.npy", np.zeros((2, 2, 2)), "must be 2-D"),
        ("none.npy", np.zeros((0, 3)), r"has no data; got shape \(0, 3\)"),
    ],
)
def test_data_errors(tmp_path, reader, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(cli.CommandError, match=message):
        cli.read_table(path)


def test_missing_and_unreadable_data_name_the_argument(tmp_path, monkeypatch):
    with pytest.raises(cli.CommandError, match=r"^DATA '.*nowhere.csv' does not exist\.$"):
        cli.read_table(tmp_path / "nowhere.csv")
    with pytest.raises(cli.CommandError, match="is a directory; expected a data file"):
        cli.read_table(tmp_path)
    (tmp_path / "locked.csv").write_text("1,2\n")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cli, "open", refuse, raising=False)  # root reads any mode bits
    with pytest.raises(cli.CommandError, match=r"^DATA '.*locked.csv': Permission denied\.$"):
        cli.read_table(tmp_path / "locked.csv")


# ------------------------------------------------------------------ the CLI on those files


def _fit(capsys, argv):
    assert cli.main([str(a) for a in argv]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_standardize_is_kept_with_the_model_and_applied_by_predict(work, runs, capsys):
    x = np.load(work / "x.npy").astype(np.float64)
    x[:, 2] *= 1000  # a feature on another scale: standardizing matters
    np.save(work / "scaled.npy", x.astype(np.float32))
    model = work / "std"
    base = ["fit", work / "scaled.npy", "-k", "4", "--model-dir", model, "--seed", "0"]
    summary, _ = _fit(capsys, [*base, "--standardize"])
    assert summary["standardize"] is True
    info = json.loads(_capture_main(capsys, ["info", "--model-dir", str(model), "--centers"]))
    mean, scale = (np.array(info["standardize"][k]) for k in ("mean", "scale"))
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean, x32.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scale, x32.std(axis=0), rtol=1e-6)
    assert cli.main(["predict", str(work / "scaled.npy"), "--model-dir", str(model)]) == 0
    labels = np.array(capsys.readouterr().out.split(), dtype=np.int64)
    z = (x32 - mean) / scale
    centers = np.array(info["cluster_centers"])
    expected = ((z[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(labels, expected)
    assert _same_partition(labels, np.load(work / "truth.npy"))
    # Resuming keeps the first fit's mean and scale; the flag must match.
    err = _main_error(capsys, base)
    assert "was trained with --standardize; add --standardize" in err
    err = _main_error(
        capsys, ["fit", work / "x.npy", "-k", "4", "--model-dir", work / "m"] + ["--standardize"]
    )
    assert "--standardize does not fit the model in" in err
    resumed, _ = _fit(
        capsys, [*base, "--standardize", "--max-steps", info["global_step"] + 2, "--tolerance", "0"]
    )
    assert resumed["steps_run"] == 2
    again = json.loads(_capture_main(capsys, ["info", "--model-dir", str(model)]))
    assert again["standardize"] == info["standardize"]
    # The export takes standardized rows: said on stderr and in the summary.
    assert cli.main(["export", "--model-dir", str(model), "-o", str(work / "std_export")]) == 0
    out, err = capsys.readouterr()
    assert "trained with --standardize: the export takes standardized rows" in err
    assert json.loads(out)["standardize"] == info["standardize"]


def test_predict_reads_the_columns_the_model_was_fit_on(work, runs, capsys):
    x = np.load(work / "x.npy")
    model = work / "named"
    summary, _ = _fit(
        capsys,
        ["fit", work / "x.csv", "-k", "4", "--model-dir", model]
        + ["--seed", "0", "--columns", "gamma,alpha"],
    )
    assert summary["features"] == ["gamma", "alpha"] and summary["dims"] == 2
    # Another file with the columns in another order, an index and a label column.
    lines = [f"{i},s{i % 3},{r[1]!r},{r[0]!r},{r[2]!r}" for i, r in enumerate(x.tolist())]
    (work / "shuffled.csv").write_text(",label,beta,alpha,gamma\n" + "\n".join(lines) + "\n")
    for data in ("x.csv", "shuffled.csv"):
        assert cli.main(["predict", str(work / data), "--model-dir", str(model)]) == 0
        out, err = capsys.readouterr()
        assert err == ""  # by the model's names: no guessing, no note
        labels = np.array(out.split(), dtype=np.int64)
        if data == "x.csv":
            first = labels
    np.testing.assert_array_equal(labels, first)
    info = json.loads(_capture_main(capsys, ["info", "--model-dir", str(model)]))
    assert info["features"] == ["gamma", "alpha"] and info["columns"] == ["gamma", "alpha"]
    # Resuming on other columns of the same width is refused, naming both.
    err = _main_error(
        capsys,
        ["fit", work / "x.csv", "-k", "4", "--model-dir", model] + ["--columns", "alpha,beta"],
    )
    assert "--columns 'alpha,beta' picks ['alpha', 'beta']" in err
    assert "was trained on ['gamma', 'alpha']" in err
    # A file without names: the fit's --columns must be positions to apply.
    err = _main_error(capsys, ["predict", work / "x.npy", "--model-dir", model])
    assert "--columns 'gamma': DATA" in err and "has no column names" in err
    assert (
        cli.main(["predict", str(work / "x.npy"), "--model-dir", str(model)] + ["--columns", "2,0"])
        == 0
    )
    np.testing.assert_array_equal(np.array(capsys.readouterr().out.split(), int), first)


def test_fit_reads_stdin(work, runs, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Stdin((work / "x.csv").read_bytes()))
    summary, _ = _fit(
        capsys, ["fit", "-", "-k", "4", "--model-dir", work / "stdin"] + ["--seed", "0"]
    )
    assert summary["rows"] == 400 and summary["features"] == ["alpha", "beta", "gamma"]
    monkeypatch.setattr(sys, "stdin", _Stdin((work / "x.csv").read_bytes()))
    assert cli.main(["predict", "-", "--model-dir", str(work / "stdin")]) == 0
    labels = np.array(capsys.readouterr().out.split(), dtype=np.int64)
    assert _same_partition(labels, np.load(work / "truth.npy"))


def test_progress_bar_says_converged(work, runs, capsys):
    summary, err = _fit(
        capsys,
        ["fit", work / "x.npy", "-k", "4", "--seed", "0"]
        + ["--model-dir", work / "progress", "--progress", "always"],
    )
    assert summary["stopped"] == "tolerance"
    last = err.rstrip("\n").split("\r")[-1]
    assert f"step {summary['global_step']}/300" in last
    assert re.search(r"converged: relative loss change \S+ < tolerance 0.0001", last), last
    assert err.endswith("\n")
    summary, err = _fit(
        capsys,
        ["fit", work / "x.npy", "-k", "4", "--seed", "0"]
        + ["--model-dir", work / "progress2", "--progress", "always"]
        + ["--max-steps", "3", "--tolerance", "0"],
    )
    assert summary["stopped"] == "max_steps"
    assert "step 3/3" in err and "converged" not in err


def test_plot_format_comes_from_the_suffix(work, runs, capsys):
    pytest.importorskip("matplotlib")
    model = ["--model-dir", str(work / "m"), str(work / "x.npy")]
    assert cli.main(["plot", *model, "-o", str(work / "clusters.pdf")]) == 0
    pdf = (work / "clusters.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert cli.main(["plot", *model, "-o", str(work / "clusters.svg")]) == 0
    assert b"<svg" in (work / "clusters.svg").read_bytes()[:1000]
    capsys.readouterr()
    err = _main_error(capsys, ["plot", *model, "-o", work / "clusters.bmpx"])
    assert "--output" in err and "unknown image format '.bmpx'" in err and ".pdf" in err


def test_os_errors_name_the_option(work, runs, capsys):
    (work / "a_file").write_text("")
    model = ["--model-dir", str(work / "m")]
    err = _main_error(capsys, ["predict", work / "x.npy", *model, "-o", work / "no/dir/l.txt"])
    assert re.search(r"--output '.*no/dir/l.txt': No such file or directory\.$", err.strip())
    err = _main_error(capsys, ["predict", work / "x.npy", *model, "-o", work / "no/l.npy"])
    assert "--output '" in err and "No such file or directory" in err
    pytest.importorskip("matplotlib")
    err = _main_error(capsys, ["plot", work / "x.npy", *model, "-o", work / "a_file/p.png"])
    assert "--output '" in err and "Not a directory" in err
    err = _main_error(capsys, ["export", *model, "-o", work / "a_file/export"])
    assert err.startswith("jaxkmeans: error: --output '") and "Not a directory" in err
    err = _main_error(capsys, ["fit", work / "x.npy", "-k", "2", "--model-dir", work / "a_file/m"])
    assert re.search(r"--model-dir '.*a_file/m': '.*a_file' is not a directory\.$", err.strip())
    assert not (work / "a_file/m").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--delimiter", "ab"], "argument --delimiter: expected one character, 'tab' or"),
        (["--columns", "a,,b"], "argument --columns: expected comma-separated column names"),
    ],
)
def test_data_option_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "x.csv", "-k", "2", "--model-dir", "d", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


def test_progress_without_tqdm_warns_and_trains_on(monkeypatch, capsys):
    import io
    import types

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import raises ImportError
    model = types.SimpleNamespace(global_step=0)
    stream = io.StringIO()
    progress = cli._Progress(model, 10, stream, enabled=True)
    progress.update(force=True)
    progress.close(converged="small")
    assert stream.getvalue() == ""
    err = capsys.readouterr().err
    assert (
        err == "jaxkmeans: warning: no progress bar: tqdm is not installed (`pip install tqdm`).\n"
    )
