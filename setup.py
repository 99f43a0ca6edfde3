"""Builds the optional native CPU kernels (jaxkmeans/kernels/native/kmeans_cpu.cc).

The extension is optional: if jaxlib's XLA FFI headers or a C++ compiler are missing,
the build prints a warning and the package installs without it (pure-JAX kernels).
Set JAXKMEANS_BUILD_NATIVE=0 to skip it.
"""

import os
import pathlib
import sys

from setuptools import Extension, setup


def _ffi_include_dir():
    try:
        import jaxlib
    except ImportError:
        return None
    inc = pathlib.Path(jaxlib.__file__).resolve().parent / "include"
    return str(inc) if (inc / "xla" / "ffi" / "api" / "ffi.h").is_file() else None


def _extensions():
    if os.environ.get("JAXKMEANS_BUILD_NATIVE", "1") == "0":
        return []
    inc = _ffi_include_dir()
    if inc is None:
        print("jaxkmeans: jaxlib's FFI headers not found; building without native kernels")
        return []
    if sys.platform == "win32":
        args = ["/O2", "/std:c++17"]
    else:
        args = ["-O3", "-std=c++17", "-Wno-attributes"]
    return [
        Extension(
            "jaxkmeans.kernels.native._kmeans_cpu",
            sources=["jaxkmeans/kernels/native/kmeans_cpu.cc"],
            include_dirs=[inc],
            extra_compile_args=args,
            language="c++",
            optional=True,
        )
    ]


setup(ext_modules=_extensions())
