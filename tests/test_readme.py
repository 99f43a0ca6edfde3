"""README.md's Python examples and examples/quickstart.py run as documented."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Paths the README's examples write to; removed first so that they start fresh
# (a KMeans on a model_dir with checkpoints would resume from them).
README_PATHS = ("/tmp/km", "/tmp/km_export")


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    for path in README_PATHS:
        shutil.rmtree(path, ignore_errors=True)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        # What the examples claim, checked.
        kmeans, restored = namespace["kmeans"], namespace["restored"]
        assert kmeans.cluster_centers().shape == (5, 2)
        assert restored.global_step == 3
        np.testing.assert_array_equal(
            namespace["jaxkmeans"].load_variable("/tmp/km", "clusters"), kmeans.cluster_centers()
        )
        points = namespace["points"]
        np.testing.assert_array_equal(
            namespace["predict"](points)["cluster_index"],
            list(kmeans.predict_cluster_index(points)),
        )
        assert namespace["labels"].shape == (10_000,)  # the functional block's labels
        assert namespace["result"].centers.shape == (8, 16)
        assert namespace["many"].shape == (4,)
        assert namespace["state"].centers.shape == (8, 16)
    finally:
        for path in README_PATHS:
            shutil.rmtree(path, ignore_errors=True)


def test_quickstart_example_runs(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    scores = [float(line.split()[1]) for line in lines if line.startswith("score:")]
    assert len(scores) == 10
    assert all(b <= a * (1 + 1e-6) for a, b in zip(scores, scores[1:], strict=False))
    assert sum(line.startswith("point:") for line in lines) == 100
    assert sum(line.startswith("delta:") for line in lines) == 9
    assert any(line.startswith("cluster centers:") for line in lines)
