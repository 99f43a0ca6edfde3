"""The distributions: an sdist built from this checkout carries the kernel's sources, the
tests' data and the examples; the wheel built from that sdist, installed into a clean
venv, loads its native kernel and runs the quickstart."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Files the sdist must carry (paths inside it, below its jaxkmeans-<version>/ folder).
SDIST_MUST_HAVE = [
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "jaxkmeans/kernels/native/kmeans_cpu.cc",
    "jaxkmeans/py.typed",
    "tests/conftest.py",
    "tests/data/tf215_fullbatch.json",
    "tests/data/TF215_REFERENCE.md",
    "examples/quickstart.py",
]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


def _sdist_names(sdist):
    """The sdist's file names, below its jaxkmeans-<version>/ folder."""
    with tarfile.open(sdist) as tar:
        return {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}


@pytest.mark.slow
def test_sdist_and_wheel_install_in_a_clean_venv_load_the_kernel_and_run_the_quickstart(
    tmp_path,
):
    pytest.importorskip("build", reason="needs the test extra's `build`")
    # No PYTHONPATH: with the checkout on it, pip would take the checkout's egg-info for
    # an installed jaxkmeans and skip installing the wheel into the venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    dist = tmp_path / "dist"
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist: the wheel
    # is compiled only from what the sdist carries.
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], env=env, timeout=1200)
    (sdist,) = dist.glob("jaxkmeans-*.tar.gz")
    (wheel,) = dist.glob("jaxkmeans-*.whl")

    names = _sdist_names(sdist)
    missing = [n for n in SDIST_MUST_HAVE if n not in names]
    assert not missing, f"{sdist.name} lacks {missing}"
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert f"examples/{example.name}" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))], "built files"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=env, timeout=900)
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
    info = json.loads(info.strip().splitlines()[-1])
    assert info["file"].startswith(str(env_dir))  # the wheel's package, not the checkout's
    native = info["native"]
    # The wheel carries the native kernel, and the clean venv's jaxlib loads it.
    assert native["built"], native
    assert native["loaded"] and native["enabled"] and native["error"] is None, native
    # Built against the FFI headers of the jaxlib that runs it (or a compatible one).
    if native.get("built_jaxlib") and native.get("runtime_jaxlib"):
        assert native["built_jaxlib"] == native["runtime_jaxlib"], native
    if native.get("built_ffi_api") and native.get("runtime_ffi_api"):
        built, running = native["built_ffi_api"], native["runtime_ffi_api"]
        assert built[0] == running[0] and built[1] <= running[1], native
    # The wheel ships the typing marker and the license, and no test or build leftovers.
    wheel_names = _run([sys.executable, "-m", "zipfile", "-l", str(wheel)])
    assert "jaxkmeans/py.typed" in wheel_names and "LICENSE" in wheel_names
    assert "tests/" not in wheel_names
