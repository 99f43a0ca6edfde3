"""The wheel: built from this checkout, installed into a clean venv, runs the quickstart."""

import os
import pathlib
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_in_a_clean_venv_and_runs_the_quickstart(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        timeout=900,
    )
    (wheel,) = wheels.glob("jaxkmeans-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], timeout=900)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    # Run outside the checkout, so the installed package (not ./jaxkmeans) is imported.
    out = _run(
        [str(python), str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path, env=env, timeout=600
    )
    assert "is in cluster" in out
    info = _run(
        [
            str(python),
            "-c",
            "import json, jaxkmeans; i = jaxkmeans.show_config(mode='dicts'); "
            "print(json.dumps({'file': jaxkmeans.__file__, 'native': i['native_kernel']}, "
            "default=str))",
        ],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert str(env_dir) in info  # the wheel's package, not the checkout's
    assert '"built": true' in info  # the wheel carries the native kernel
    # The wheel ships the typing marker and the license.
    names = _run([sys.executable, "-m", "zipfile", "-l", str(wheel)])
    assert "jaxkmeans/py.typed" in names and "LICENSE" in names
