"""The native kernel's loader can never break JAX: an unusable library (built against
another XLA FFI API version, or not a library at all) leaves the pure-JAX path in use,
with one warning, and every JAX call still works."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import pytest

from jaxkmeans.kernels import native

# Runs in a fresh process with JAXKMEANS_NATIVE_LIBRARY set: the loader must start JAX's
# CPU backend itself, refuse the library, warn once, and leave jaxkmeans working.
_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from jaxkmeans.kernels import native
    ok = [native.available() for _ in range(3)]
    info = native.build_info()
    import numpy as np, jax, jax.numpy as jnp, jaxkmeans
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5)).astype(np.float32)
    c = x[:7].copy()
    la, da = jaxkmeans.assign(x, c)
    lb, db = jaxkmeans.assign(x, c, kernel="xla")
    na, sa = jaxkmeans.lloyd_step(x, c)
    nb, sb = jaxkmeans.lloyd_step(x, c, kernel="xla")
    assert np.array_equal(np.asarray(la), np.asarray(lb))
    assert np.array_equal(np.asarray(da), np.asarray(db))
    assert np.array_equal(np.asarray(na), np.asarray(nb))
    assert float(sa.loss) == float(sb.loss)
    assert float(jnp.ones(3).sum()) == 3.0
    relevant = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                and "native" in str(w.message)]
print("RESULT " + json.dumps({"available": ok, "error": native.load_error(),
                              "warnings": relevant, "info": info}, default=str))
"""


def _run_child(library: pathlib.Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXKMEANS_NATIVE_LIBRARY=str(library))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _assert_fell_back(res: dict, why: str) -> None:
    assert res["available"] == [False, False, False]
    assert res["error"] and re.search(why, res["error"]), res["error"]
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "pure-JAX" in res["warnings"][0] and res["error"] in res["warnings"][0]
    assert res["info"]["loaded"] is False and res["info"]["error"] == res["error"]


def test_not_a_library_falls_back_with_one_warning(tmp_path):
    bad = tmp_path / "_kmeans_cpu.so"
    bad.write_bytes(b"this is not a shared library")
    _assert_fell_back(_run_child(bad), "could not load")


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


@pytest.mark.slow
@pytest.mark.parametrize("bump", ["MINOR", "MAJOR"])
def test_newer_ffi_api_falls_back_and_jax_keeps_working(tmp_path, bump):
    """A kernel built against newer XLA FFI headers than the running jaxlib's (what an
    isolated pip build can do): refused before registration, which would otherwise
    leave JAX's CPU backend unable to start."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++/c++) to build the test kernel")
    src_inc = pathlib.Path(jax.ffi.include_dir())
    if not (src_inc / "xla" / "ffi" / "api" / "c_api.h").is_file():
        pytest.skip(f"jaxlib ships no XLA FFI headers under {src_inc}")
    inc = tmp_path / "include"
    shutil.copytree(src_inc, inc)
    header = inc / "xla" / "ffi" / "api" / "c_api.h"
    text = header.read_text()
    pattern = rf"^#define XLA_FFI_API_{bump} (\d+)"
    old = int(re.search(pattern, text, re.M).group(1))
    header.write_text(re.sub(pattern, f"#define XLA_FFI_API_{bump} {old + 1}", text, flags=re.M))
    lib = tmp_path / "_kmeans_cpu_newer.so"
    src = pathlib.Path(native.__file__).parent / "kmeans_cpu.cc"
    subprocess.run(
        [cxx, "-O0", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{inc}", str(src), "-o", str(lib)],
        check=True,
        timeout=600,
    )
    res = _run_child(lib)
    _assert_fell_back(res, "built against XLA FFI API")
    info = res["info"]
    running = info["runtime_ffi_api"]
    assert info["library"] == str(lib) and info["built"] is True
    assert info["built_ffi_api"] != running and running is not None
    assert info["source"] == "env JAXKMEANS_NATIVE_LIBRARY"


@pytest.mark.parametrize(
    "built,running,ok",
    [
        ((0, 3), (0, 3), True),
        ((0, 1), (0, 3), True),  # XLA supports older minors of its major version
        ((0, 4), (0, 3), False),
        ((1, 0), (0, 3), False),
        ((0, 3), (1, 3), False),
    ],
)
def test_ffi_version_rule(built, running, ok):
    info = {
        "built_ffi_api": built,
        "runtime_ffi_api": running,
        "built_jaxlib": "0.0.1",
        "runtime_jaxlib": "0.0.2",
    }
    assert (native._mismatch(info) is None) == ok


def test_jaxlib_versions_compared_without_ffi_versions():
    info = {"built_ffi_api": None, "runtime_ffi_api": None, "runtime_jaxlib": "0.9"}
    assert native._mismatch(dict(info, built_jaxlib="0.8")) is not None
    assert native._mismatch(dict(info, built_jaxlib="0.9")) is None
    assert native._mismatch(dict(info, built_jaxlib=None)) is None


def test_build_info_describes_the_loaded_library():
    info = native.build_info()
    assert info["loaded"] == native.available()
    assert info["error"] == native.load_error()
    assert info["enabled"] == native.enabled()
    if info["loaded"]:
        assert info["kernel_isa"] in ("avx2+fma", "portable")
        assert info["built_ffi_api"] is not None
        if info["runtime_ffi_api"] is not None:
            assert info["built_ffi_api"][0] == info["runtime_ffi_api"][0]
            assert info["built_ffi_api"][1] <= info["runtime_ffi_api"][1]
