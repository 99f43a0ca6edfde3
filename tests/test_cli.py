"""The `jaxkmeans` command line, end to end in subprocesses (`python -m jaxkmeans ...`).

Starting Python and importing jax costs seconds per process, so the commands run in
two concurrent rounds (the fits first, then everything that reads their models) and
the tests check the recorded results.
"""

import concurrent.futures
import json
import os
import pathlib
import struct
import subprocess
import sys
import tomllib

import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEANS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [10.0, 10.0, 5.0]])
PLOT_SIZE = (1100, 450)  # pixels: cli.PLOT_SIZE_INCHES at cli.PLOT_DPI
MINI_BATCH_STEPS = 40


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
    assert steps == list(range(1, fitted["global_step"] + 1))
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
    assert "does not fit this KMeans" in err
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
