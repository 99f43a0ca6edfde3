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
        "line 3, column 2: 'oops' is not a number",
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
        ("data.json", "[1, 2]", "must be a .npy, .csv or .txt"),
        ("junk.npy", "not an array", "is not a readable .npy array"),
    ],
)
def test_load_data_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    if message is None:  # NaN parses; it is reported when the batches are read
        x = cli.load_data(tmp_path / name)
        with pytest.raises(cli.CommandError, match=r"NaN or inf values \(data row 2\)"):
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

    argv = ["info", "--model-dir", str(tmp_path)]
    monkeypatch.setattr(cli, "_cmd_info", numpy_bug)
    with pytest.raises(ValueError, match="reshape"):
        cli.main(argv)
    monkeypatch.setattr(cli, "_cmd_info", bad_input)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxkmeans: error:") and "columns" in err
    assert "Traceback" not in err
