"""Smoke tests of the benchmark harness in bench/ (not the benchmark itself): argument
parsing, the report on stored and new result files, and one tiny end-to-end run of the
whole-fit and compile-time sections (slow: it compiles in fresh processes)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    return _load("bench_report", BENCH / "report.py")


@pytest.fixture
def run(monkeypatch):
    # run.py sets thread and cache variables at import: keep them out of this process.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    return _load("bench_run", BENCH / "run.py")


def test_parse_fit_shapes(run):
    assert run.parse_fit_shapes("25e4x32x64, 1e6x32x64:kpp,2e3x4x8:kmeans_plus_plus") == [
        (250_000, 32, 64, "random"),
        (1_000_000, 32, 64, "kmeans_plus_plus"),
        (2_000, 4, 8, "kmeans_plus_plus"),
    ]
    with pytest.raises(Exception, match="init must be"):
        run.parse_fit_shapes("1e4x2x2:kmc2")


@pytest.mark.parametrize("n", [300, 10_000, 10_240, 123_457])
def test_compile_sizes_share_and_leave_the_bucket(run, n):
    from jaxkmeans._validation import bucket_rows

    sizes = run.compile_sizes(n, bucket_rows)
    assert sizes["first"] == sizes["second"] == n
    assert sizes["same_bucket"] != n
    assert bucket_rows(sizes["same_bucket"]) == bucket_rows(n)
    assert bucket_rows(sizes["other_bucket"]) != bucket_rows(n)


def test_report_renders_stored_results(report):
    paths = [
        p
        for p in sorted((BENCH / "results").rglob("*.json"))
        if "schema" in json.loads(p.read_text())
    ]
    assert paths
    for path in paths:
        md = report.render_markdown(json.loads(path.read_text()), path.name, None)
        assert "## Lloyd iterations" in md
    assert "schema" in json.loads(report.newest_result().read_text())


def test_report_renders_fit_and_compile(report):
    def entry(seconds, inertia):
        return {
            "seconds": seconds,
            "seconds_all": [seconds],
            "n_iter_all": [10],
            "inertia_f64": inertia,
        }

    fit_row = {
        "N": 250_000,
        "D": 32,
        "K": 64,
        "init": "random",
        "iters": 10,
        "best_peer": "faiss",
        "contestants": {
            "jaxkmeans_fit": entry(2.0, 1.0)
            | {
                "memory": {
                    "first_peak_extra_x": 3.3,
                    "second_peak_extra_x": 1.5,
                    "second_call_extra_x": 1.1,
                    "x_bytes": 32_000_000,
                    "first_s": 4.0,
                }
            },
            "jaxkmeans_train": {"error": "RuntimeError: boom"},
            "jaxkmeans_sklearn": entry(2.5, 1.0),
            "sklearn": entry(1.5, 1.0),
            "faiss": entry(1.0, 1.01) | {"memory": {"error": "probe timed out after 9 s"}},
            "jaxkmeans_fit_from_centers": entry(1.1, 1.0),
            "jaxkmeans_steps_assign": entry(1.0, 1.0),
        },
    }
    for e in fit_row["contestants"].values():
        if "seconds" in e:
            e["time_vs_best_peer"] = e["seconds"] / 1.0
    fit_row["fit_vs_steps_assign"] = 1.1
    compile_sec = {
        "N": 10_000,
        "D": 10,
        "K": 8,
        "reps": 1,
        "sizes": {"first": 10_000, "second": 10_000, "same_bucket": 10_120, "other_bucket": 12_345},
        "entries": {
            "sklearn_dropin": {
                "import_s": 1.7,
                "first_s": 2.2,
                "first_compiles": 9,
                "second_s": 0.02,
                "same_bucket_s": 0.05,
                "other_bucket_s": 1.9,
                "compile_s": 2.18,
                "same_bucket_vs_second": 2.5,
                "session_same_bucket_s": 3.95,
                "session_same_bucket_vs_sklearn": 3.1,
            },
            "assign": {"error": "TypeError: x"},
            "sklearn": {"import_s": 1.2, "first_s": 0.02, "second_s": 0.005},
        },
    }
    result = {
        "schema": 2,
        "config": {"fit_iters": 10},
        "lloyd": [],
        "fit": [fit_row],
        "compile": compile_sec,
    }
    md = report.render_markdown(result, "x.json", None)
    assert "## Whole fit" in md and "## Compile time" in md
    assert "3.30× / 1.50× (1.10×)" in md  # memory: 1st / 2nd call (2nd above its start)
    assert "`fit/jaxkmeans_train`: RuntimeError: boom" in md
    assert "`fit/faiss/memory`: probe timed out" in md
    assert "`compile/assign`: TypeError: x" in md
    assert "≤ 2×" in md


@pytest.mark.slow
def test_tiny_fit_and_compile_run(tmp_path, report):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(BENCH / "run.py"), "--sections", "fit,compile", "--no-report"]
    cmd += ["--fit-shapes", "3000x4x3:kpp", "--fit-memory", "none", "--reps", "1"]
    cmd += ["--fit-iters", "3", "--compile-shape", "3000x4x3", "--compile-reps", "1"]
    cmd += ["--compile-entries", "fit_given_centers,sklearn", "--threads", "1"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == 2
    optional = set() if result["versions"].get("faiss") else {"faiss"}
    for row in result["fit"]:
        for name, e in row["contestants"].items():
            if name in optional:
                continue
            assert e.get("error") is None, (name, e)
            assert e["seconds"] > 0 and e["inertia_f64"] > 0
        assert row["fit_vs_steps_assign"] > 0
    for name, e in result["compile"]["entries"].items():
        assert e.get("error") is None, (name, e)
        assert e["first_s"] > 0 and e["same_bucket_s"] > 0
    run_env = result["compile"]["entries"]["fit_given_centers"]["runs"][0]["env"]
    assert run_env == {"JAXKMEANS_COMPILATION_CACHE": "0", "JAX_COMPILATION_CACHE_DIR": None}
    md = tmp_path / "R.md"
    report.write_report(out, md)
    assert "## Whole fit" in md.read_text() and "## Compile time" in md.read_text()


@pytest.mark.slow
def test_fit_memory_probe():
    pytest.importorskip("sklearn")
    cmd = [sys.executable, str(BENCH / "run.py"), "--threads", "1", "--fit-probe", "3000x4x3"]
    cmd += ["--fit-probe-contestant", "sklearn", "--fit-iters", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FITPROBE_JSON ")][-1]
    mem = json.loads(line.split(" ", 1)[1])
    assert mem["x_bytes"] == 3000 * 4 * 4 and mem["first_s"] > 0
    if mem["hwm_resettable"]:
        assert mem["first_peak_extra"] >= 0 and mem["second_call_extra_x"] >= 0


def test_partial_runs_render_after_the_full_run_they_follow(report, tmp_path):
    full = {"schema": 1, "created": "2026-01-01T00:00:00", "lloyd": [{"N": 1}]}
    later = {
        "schema": 1,
        "created": "2026-01-02T00:00:00",
        "config": {"sections": ["compile"]},
        "versions": {"git_commit": "abc1234"},
        "compile": {"reps": 1, "N": 10, "D": 2, "K": 3, "entries": {}},
    }
    older = dict(later, created="2025-12-31T00:00:00")
    for name, data in (("full", full), ("later", later), ("older", older)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    # A partial run is never taken as the main run, even when it is the newest ...
    assert report.newest_result(tmp_path).name == "full.json"
    # ... and only the partial runs after the main one are shown, one level down.
    runs = report.later_partial_runs(full, tmp_path)
    assert [p.name for p, _ in runs] == ["later.json"]
    lines = report.later_run_section(*runs[0])
    assert lines[0] == "## Later run: compile" and "abc1234" in lines[2]
    assert "### Compile time" in lines
