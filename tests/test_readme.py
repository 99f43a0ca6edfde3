"""README.md's Python examples and examples/quickstart.py run as documented."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Paths the README's examples write to. Each run gets fresh private copies (a KMeans on a
# model_dir with checkpoints would resume from them, and concurrent runs must not share).
README_PATHS = ("/tmp/km_export", "/tmp/km")


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    text = "\n".join(blocks)
    assert all(path in text for path in README_PATHS)
    paths = {path: str(tmp_path / pathlib.Path(path).name) for path in README_PATHS}
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        for path, private in paths.items():  # /tmp/km_export before its prefix /tmp/km
            block = block.replace(f'"{path}"', f'"{private}"')
        assert "/tmp/km" not in block, "a README path the test does not redirect"
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    # What the examples claim, checked.
    kmeans, restored = namespace["kmeans"], namespace["restored"]
    assert kmeans.cluster_centers().shape == (5, 2)
    assert restored.global_step == 3
    np.testing.assert_array_equal(
        namespace["jaxkmeans"].load_variable(paths["/tmp/km"], "clusters"),
        kmeans.cluster_centers(),
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
