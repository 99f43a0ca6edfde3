"""Builds the optional native CPU kernels (jaxkmeans/kernels/native/kmeans_cpu.cc).

The extension is optional: if jaxlib's XLA FFI headers or a C++ compiler are missing,
the build prints a warning and the package installs without it (pure-JAX kernels).
Set JAXKMEANS_BUILD_NATIVE=0 to skip it.

Which headers: the kernel must be built against an XLA FFI API version that the jaxlib
which will run it supports. A plain ``pip install .`` builds in an isolated environment
with the newest jaxlib's headers, which may be newer than the jaxlib installed next to
the package; ``pip install --no-build-isolation .`` builds against the installed jaxlib
instead (recommended), and JAXKMEANS_FFI_INCLUDE=<dir> (a directory holding
``xla/ffi/api/ffi.h``, e.g. ``python -c "import jax; print(jax.ffi.include_dir())"`` in
the target environment) overrides both. The FFI API version and the jaxlib version used
are compiled into the library; at import the loader compares them with the running
jaxlib and falls back to pure JAX, with one warning, on a mismatch.
"""

import os
import pathlib
import re
import sys

from setuptools import Extension, setup


def _jaxlib():
    """(include dir, version) of the jaxlib importable here, or (None, None)."""
    try:
        import jaxlib
    except ImportError:
        return None, None
    try:
        from jaxlib.version import __version__ as version
    except ImportError:
        version = getattr(jaxlib, "__version__", None)
    inc = pathlib.Path(jaxlib.__file__).resolve().parent / "include"
    return (str(inc) if (inc / "xla" / "ffi" / "api" / "ffi.h").is_file() else None), version


def _ffi_include_dir():
    """(include dir, jaxlib version or None): JAXKMEANS_FFI_INCLUDE first, else jaxlib's."""
    env = os.environ.get("JAXKMEANS_FFI_INCLUDE", "").strip()
    if env:
        if not (pathlib.Path(env) / "xla" / "ffi" / "api" / "ffi.h").is_file():
            print(f"jaxkmeans: JAXKMEANS_FFI_INCLUDE={env} holds no xla/ffi/api/ffi.h")
            return None, None
        inc, version = _jaxlib()
        same = inc is not None and pathlib.Path(inc).resolve() == pathlib.Path(env).resolve()
        return env, (version if same else None)
    return _jaxlib()


def _ffi_api_version(inc):
    """(major, minor) from ``xla/ffi/api/c_api.h`` under `inc`, or None."""
    try:
        text = (pathlib.Path(inc) / "xla" / "ffi" / "api" / "c_api.h").read_text()
    except OSError:
        return None
    major = re.search(r"^#define XLA_FFI_API_MAJOR (\d+)", text, re.M)
    minor = re.search(r"^#define XLA_FFI_API_MINOR (\d+)", text, re.M)
    return (int(major.group(1)), int(minor.group(1))) if major and minor else None


def _extensions():
    if os.environ.get("JAXKMEANS_BUILD_NATIVE", "1") == "0":
        return []
    inc, jaxlib_version = _ffi_include_dir()
    if inc is None:
        print("jaxkmeans: jaxlib's FFI headers not found; building without native kernels")
        return []
    api = _ffi_api_version(inc)
    print(
        f"jaxkmeans: building the native kernels against the XLA FFI headers in {inc} "
        f"(FFI API {'.'.join(map(str, api)) if api else 'unknown'}, "
        f"jaxlib {jaxlib_version or 'unknown'})"
    )
    if sys.platform == "win32":
        args = ["/O2", "/std:c++17"]
    else:
        args = ["-O3", "-std=c++17", "-Wno-attributes"]
    macros = []
    if jaxlib_version and re.fullmatch(r"[0-9A-Za-z.+_-]+", jaxlib_version):
        macros.append(("JAXKMEANS_BUILT_JAXLIB", f'"{jaxlib_version}"'))
    return [
        Extension(
            "jaxkmeans.kernels.native._kmeans_cpu",
            sources=["jaxkmeans/kernels/native/kmeans_cpu.cc"],
            include_dirs=[inc],
            define_macros=macros,
            extra_compile_args=args,
            language="c++",
            optional=True,
        )
    ]


setup(ext_modules=_extensions())
