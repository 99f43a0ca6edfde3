"""Process-wide configuration: JAX's persistent compilation cache and ``show_config``.

Nothing here runs at import: ``import jaxkmeans`` changes no JAX setting. The command
line and the scikit-learn drop-in call :func:`use_default_compilation_cache` before they
compile; library users opt in with :func:`enable_compilation_cache`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import sys
from typing import IO, Any

import jax

__all__ = [
    "CACHE_ENV_VAR",
    "default_compilation_cache_dir",
    "enable_compilation_cache",
    "use_default_compilation_cache",
    "config_info",
    "show_config",
]

# `JAXKMEANS_COMPILATION_CACHE=0` (or false / no / off) turns the automatic cache of the
# CLI and the drop-in off. JAX writes an entry in place, so a process killed while
# writing one leaves it truncated; entries are compressed, so reading one back fails
# cleanly (JAX warns and compiles again), which tests/test_config.py checks.
CACHE_ENV_VAR = "JAXKMEANS_COMPILATION_CACHE"
_OFF = frozenset({"0", "false", "no", "off"})
# JAX's own default for `jax_persistent_cache_min_compile_time_secs`: at 1 s nothing of
# jaxkmeans is ever stored (its programs compile in 0.02-0.9 s each on CPU).
_JAX_DEFAULT_MIN_COMPILE_SECS = 1.0
# Size bound of the cache directory when JAX can enforce one (it needs `filelock`).
_DEFAULT_MAX_SIZE_BYTES = 1 << 30

_auto_checked = False  # use_default_compilation_cache runs its checks once per process
_auto_path: str | None = None


def default_compilation_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/jaxkmeans/jax-compilation-cache`` (``~/.cache/...`` without it).

    Examples:
      >>> from jaxkmeans._config import default_compilation_cache_dir
      >>> default_compilation_cache_dir().parts[-2:]
      ('jaxkmeans', 'jax-compilation-cache')
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxkmeans" / "jax-compilation-cache"


def _jax_option(name: str) -> Any:
    """The current value of JAX config option `name` (``jax.config.<name>``).

    JAX defines its options as dynamic attributes of ``jax.config``, which type checkers
    cannot see; this reads them the same way, by attribute."""
    return getattr(jax.config, name)


def _user_cache_dir() -> str | None:
    """The cache directory the user gave JAX itself (config or environment), if any."""
    return (
        _jax_option("jax_compilation_cache_dir")
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or None
    )


def _reset_jax_cache() -> None:
    """Makes JAX pick up a changed cache setting even after it has compiled something:
    JAX decides once per process whether the cache is used, at its first compilation."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> str:
    """Keeps compiled programs on disk, so a new process skips compiling them again.

    Sets JAX's persistent compilation cache (``jax_compilation_cache_dir``) to `path`, or
    when `path` is None to the directory the user already gave JAX
    (``jax.config.update("jax_compilation_cache_dir", ...)`` or
    ``JAX_COMPILATION_CACHE_DIR``), else to :func:`default_compilation_cache_dir`.
    It also lowers JAX's persistence threshold
    (``jax_persistent_cache_min_compile_time_secs``, 1 s by default, under which every
    jaxkmeans program compiles) to 0 and stores entries of any size, unless those two
    settings were already changed from JAX's defaults. It works at any time, also after
    JAX has compiled other programs in this process. The cache is JAX's: it holds
    compiled XLA executables keyed by the program, the devices and the jax/jaxlib
    versions; it is safe to delete at any time.

    Args:
      path: directory of the cache (created when missing), or None for the default.

    Returns:
      The absolute path of the cache directory in use.

    Example:
      >>> import tempfile
      >>> import jaxkmeans
      >>> where = jaxkmeans.enable_compilation_cache(tempfile.mkdtemp())
      >>> jaxkmeans.show_config(mode="dicts")["compilation_cache"]["dir"] == where
      True
    """
    if path is None:
        path = _user_cache_dir() or default_compilation_cache_dir()
    where = os.path.abspath(os.path.expanduser(os.fspath(path)))
    os.makedirs(where, exist_ok=True)
    config = jax.config
    changed = _jax_option("jax_compilation_cache_dir") != where or not _jax_option(
        "jax_enable_compilation_cache"
    )
    if changed:
        config.update("jax_compilation_cache_dir", where)
        config.update("jax_enable_compilation_cache", True)
    if _jax_option("jax_persistent_cache_min_compile_time_secs") == _JAX_DEFAULT_MIN_COMPILE_SECS:
        config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        changed = True
    if _jax_option("jax_persistent_cache_min_entry_size_bytes") == 0:
        # 0 lets JAX choose a filesystem-dependent minimum; -1 stores every entry (a
        # small program still costs 20-100 ms to compile and ~1 ms to read back).
        config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        changed = True
    if (
        _jax_option("jax_compilation_cache_max_size") == -1
        and importlib.util.find_spec("filelock") is not None
        and where == os.path.abspath(default_compilation_cache_dir())
    ):
        config.update("jax_compilation_cache_max_size", _DEFAULT_MAX_SIZE_BYTES)
        changed = True
    if changed:
        _reset_jax_cache()
    return where


def use_default_compilation_cache() -> str | None:
    """The CLI's and the drop-in's automatic cache (cheap after the first call).

    Enables :func:`enable_compilation_cache` at the default directory unless
    ``JAXKMEANS_COMPILATION_CACHE=0``, the user configured JAX's own cache (kept as it
    is, thresholds included), JAX's cache is switched off
    (``jax_enable_compilation_cache`` False), or the directory cannot be created.
    Returns the directory in use, or None.

    Examples:
      >>> import os
      >>> from jaxkmeans._config import use_default_compilation_cache
      >>> where = use_default_compilation_cache()
      >>> where is None or os.path.isdir(where)
      True
    """
    global _auto_checked, _auto_path
    if _auto_checked:
        return _auto_path
    _auto_checked = True
    user = _user_cache_dir()
    if user:
        _auto_path = user
        return user
    if os.environ.get(CACHE_ENV_VAR, "").strip().lower() in _OFF:
        return None
    if not _jax_option("jax_enable_compilation_cache"):
        return None
    try:
        _auto_path = enable_compilation_cache()
    except OSError:  # e.g. a read-only home directory: run without a cache
        _auto_path = None
    return _auto_path


# ------------------------------------------------------------------------ show_config


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_features() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter to the kernels (Linux /proc/cpuinfo)."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": None, "flags": None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and info["model"] is None:
            info["model"] = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    wanted: tuple[str, ...]
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")
    wanted += ("asimd", "sve", "sve2")  # aarch64
    info["flags"] = [f for f in wanted if f in flags] if flags else None
    return info


def _compilation_cache_info() -> dict[str, Any]:
    where = _jax_option("jax_compilation_cache_dir")
    info: dict[str, Any] = {
        "dir": where,
        "enabled": bool(where) and bool(_jax_option("jax_enable_compilation_cache")),
        "min_compile_time_secs": _jax_option("jax_persistent_cache_min_compile_time_secs"),
        "min_entry_size_bytes": _jax_option("jax_persistent_cache_min_entry_size_bytes"),
        "max_size_bytes": _jax_option("jax_compilation_cache_max_size"),
        "entries": None,
        "size_bytes": None,
        "env": os.environ.get(CACHE_ENV_VAR),
    }
    if where and os.path.isdir(where):
        entries = size = 0
        with os.scandir(where) as it:
            for entry in it:
                if entry.name.endswith("-cache") and entry.is_file():
                    entries += 1
                    size += entry.stat().st_size
        info["entries"], info["size_bytes"] = entries, size
    return info


def _pallas_info(platforms: set[str]) -> dict[str, Any]:
    """Which fused Pallas kernel families can run here (opt-in: ``kernel="pallas"``)."""
    return {
        "gpu_triton": "gpu" in platforms or "cuda" in platforms or "rocm" in platforms,
        "tpu_mosaic": "tpu" in platforms,
        "cpu": "interpret mode only (for tests)",
        "selected_by_default": False,
    }


def config_info() -> dict[str, Any]:
    """Everything :func:`show_config` prints, as a dict.

    Examples:
      >>> import jaxkmeans
      >>> from jaxkmeans._config import config_info
      >>> info = config_info()
      >>> info["versions"]["jaxkmeans"] == jaxkmeans.__version__, "loaded" in info["native_kernel"]
      (True, True)
    """
    import numpy as np

    from jaxkmeans.kernels import native

    try:
        devices = jax.devices()
        backend: str | None = jax.default_backend()
        backend_error = None
    except RuntimeError as e:  # no usable backend
        devices, backend, backend_error = [], None, str(e)
    platforms = {d.platform for d in devices}
    import jaxkmeans

    return {
        "versions": {
            "python": platform.python_version(),
            "jaxkmeans": jaxkmeans.__version__,
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "numpy": np.__version__,
            "optax": _version("optax"),
            "orbax-checkpoint": _version("orbax-checkpoint"),
            "scikit-learn": _version("scikit-learn"),
            "matplotlib": _version("matplotlib"),
        },
        "platform": {"system": platform.platform(), "executable": sys.executable},
        "backend": backend,
        "backend_error": backend_error,
        "devices": [str(d) for d in devices],
        "process_count": jax.process_count() if devices else None,
        "native_kernel": native.build_info(),
        "cpu": _cpu_features(),
        "pallas": _pallas_info(platforms),
        "compilation_cache": _compilation_cache_info(),
    }


def _explain_native(info: dict[str, Any]) -> str:
    if info.get("loaded") and info.get("enabled"):
        return f"loaded ({info.get('kernel_isa')}) from {info.get('library')}"
    if info.get("loaded"):
        return "loaded but switched off (JAXKMEANS_NATIVE=0 or set_enabled(False))"
    if not info.get("built"):
        why = info.get("error") or (
            "the C++ extension was not built at install; reinstall with a C++ compiler available"
        )
        return f"NOT BUILT: {why}. {_XLA_SLOWER}"
    return f"NOT LOADED: {info.get('error')}. {_XLA_SLOWER}"


# What running without the native kernel costs, as measured (bench/RESULTS.md, Lloyd
# iterations: `lloyd_step` against `lloyd_step, pure XLA`, 2 CPU cores).
_XLA_SLOWER = (
    "CPU fits run the pure-JAX kernels (1.9-18x slower per Lloyd iteration in the "
    "repository's bench/RESULTS.md; the gap is widest with few features)"
)


def _format(info: dict[str, Any]) -> str:
    lines = ["jaxkmeans configuration"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<18}{text}")

    for name, version in info["versions"].items():
        row(name, version or "not installed")
    row("system", info["platform"]["system"])
    row("executable", info["platform"]["executable"])
    if info["backend_error"]:
        row("backend", f"none: {info['backend_error']}")
    else:
        row("backend", f"{info['backend']} ({info['process_count']} process(es))")
    row("devices", ", ".join(info["devices"]) or "none")
    cpu = info["cpu"]
    flags = " ".join(cpu["flags"]) if cpu["flags"] else "unknown"
    row("cpu", f"{cpu['model'] or cpu['machine']}; features: {flags}")
    native = info["native_kernel"]
    row("native kernel", _explain_native(native))
    if native.get("built"):
        row(
            "",
            f"built for jaxlib {native.get('built_jaxlib')} (FFI {native.get('built_ffi_api')}),"
            f" running jaxlib {native.get('runtime_jaxlib')} (FFI {native.get('runtime_ffi_api')})",
        )
    pallas = info["pallas"]
    families = [
        n for n, key in (("GPU (Triton)", "gpu_triton"), ("TPU", "tpu_mosaic")) if pallas[key]
    ]
    where = ", ".join(families) if families else "no GPU/TPU here (CPU: interpret mode only)"
    row("pallas kernels", f"{where}; opt-in with kernel='pallas'")
    cache = info["compilation_cache"]
    if cache["enabled"]:
        text = str(cache["dir"])
        if cache["entries"] is not None:
            text += f" ({cache['entries']} entries, {cache['size_bytes'] / 2**20:.1f} MiB)"
        row("compile cache", text)
        row("", f"stores programs compiling for >= {cache['min_compile_time_secs']} s")
    else:
        row("compile cache", "off (jaxkmeans.enable_compilation_cache() turns it on)")
    return "\n".join(lines)


def show_config(mode: str = "stdout", file: IO[str] | None = None) -> dict[str, Any] | None:
    """Prints versions, devices, native-kernel status, CPU features, Pallas kernels and
    the compile cache: what to include in a bug report, and why an install is slow.

    Args:
      mode: ``"stdout"`` prints a report (to `file`, default ``sys.stdout``) and returns
        None; ``"dicts"`` prints nothing and returns the same information as a dict.
      file: where ``"stdout"`` mode prints.

    Returns:
      None, or the dict in ``"dicts"`` mode (keys ``versions``, ``platform``,
      ``backend``, ``devices``, ``native_kernel``, ``cpu``, ``pallas``,
      ``compilation_cache``, ...).

    Example:
      >>> import jaxkmeans
      >>> info = jaxkmeans.show_config(mode="dicts")
      >>> info["versions"]["jaxkmeans"] == jaxkmeans.__version__
      True
      >>> sorted(info["native_kernel"])[:2]
      ['built', 'built_ffi_api']
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"`mode` must be 'stdout' or 'dicts'; got {mode!r}.")
    info = config_info()
    if mode == "dicts":
        return info
    print(_format(info), file=file if file is not None else sys.stdout)
    return None
