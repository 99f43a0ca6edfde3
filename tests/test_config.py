"""jaxkmeans.enable_compilation_cache, the CLI's / drop-in's default cache, show_config."""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import jaxkmeans
from jaxkmeans import _config, cli

# Counts JAX's persistent-cache hits (the monitoring event JAX records on each one).
_RUN_CACHED = textwrap.dedent(
    """
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event)
        if event == "/jax/compilation_cache/cache_hits" else None
    )
    jnp.ones(3).block_until_ready()  # JAX compiled before the cache was set: still works
    import jaxkmeans
    from jaxkmeans import _config
    path = _config.use_default_compilation_cache()
    x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    labels = jaxkmeans.assign(x, x[:4])
    print(json.dumps({"path": path, "hits": len(hits), "labels": np.asarray(labels).tolist()}))
    """
)


def _run(script: str, **env: str) -> dict:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_COMPILATION_CACHE_DIR", _config.CACHE_ENV_VAR, "XDG_CACHE_HOME")
    }
    full_env.update(JAX_PLATFORMS="cpu", **env)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(path: pathlib.Path) -> set[str]:
    return {p.name for p in path.glob("*-cache")}


def test_default_cache_is_written_then_read_by_a_second_process(tmp_path):
    expected = tmp_path / "jaxkmeans" / "jax-compilation-cache"
    first = _run(_RUN_CACHED, XDG_CACHE_HOME=str(tmp_path))  # on without any setting
    assert first["path"] == str(expected)
    stored = _entries(expected)
    assert stored, "nothing was written to the cache"
    assert first["hits"] == 0

    second = _run(_RUN_CACHED, XDG_CACHE_HOME=str(tmp_path), **{_config.CACHE_ENV_VAR: "1"})
    assert second["hits"] >= 1  # compiled programs came from disk
    assert second["labels"] == first["labels"]
    assert _entries(expected) == stored  # nothing new to compile

    # A process killed while JAX wrote an entry leaves it truncated (JAX writes in
    # place): the next process warns, compiles again and gets the same result.
    for entry in expected.glob("*-cache"):
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    third = _run(_RUN_CACHED, XDG_CACHE_HOME=str(tmp_path))
    assert third["labels"] == first["labels"]


def test_env_var_off_and_the_users_own_jax_cache_are_respected(tmp_path):
    user_dir = tmp_path / "users-own"
    env_dir = tmp_path / "env"
    explicit = tmp_path / "explicit"
    script = textwrap.dedent(
        f"""
        import json, os
        import jax
        from jaxkmeans import _config
        out = {{}}
        os.environ["{_config.CACHE_ENV_VAR}"] = "0"
        out["off"] = _config.use_default_compilation_cache()
        out["off_dir"] = jax.config.jax_compilation_cache_dir
        _config._auto_checked = False
        del os.environ["{_config.CACHE_ENV_VAR}"]
        out["default"] = _config.use_default_compilation_cache()  # on by default
        out["default_dir"] = jax.config.jax_compilation_cache_dir
        for name, value in [("jax_compilation_cache_dir", None),  # as in a fresh process
                            ("jax_persistent_cache_min_compile_time_secs", 1.0),
                            ("jax_persistent_cache_min_entry_size_bytes", 0),
                            ("jax_compilation_cache_max_size", -1)]:
            jax.config.update(name, value)
        os.environ["{_config.CACHE_ENV_VAR}"] = "0"

        _config._auto_checked = False  # a fresh process, as far as the helper knows
        del os.environ["{_config.CACHE_ENV_VAR}"]
        os.environ["JAX_COMPILATION_CACHE_DIR"] = {str(env_dir)!r}
        out["env"] = _config.use_default_compilation_cache()
        del os.environ["JAX_COMPILATION_CACHE_DIR"]

        _config._auto_checked = False
        jax.config.update("jax_compilation_cache_dir", {str(user_dir)!r})
        out["user"] = _config.use_default_compilation_cache()
        out["user_min_secs"] = jax.config.jax_persistent_cache_min_compile_time_secs
        out["explicit_default"] = _config.enable_compilation_cache()  # keeps the user's dir

        out["explicit"] = _config.enable_compilation_cache({str(explicit)!r})
        out["explicit_dir"] = jax.config.jax_compilation_cache_dir
        out["min_secs"] = jax.config.jax_persistent_cache_min_compile_time_secs
        out["min_size"] = jax.config.jax_persistent_cache_min_entry_size_bytes
        print(json.dumps(out))
        """
    )
    out = _run(script, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out["off"] is None and out["off_dir"] is None
    default = str(tmp_path / "xdg" / "jaxkmeans" / "jax-compilation-cache")
    assert out["default"] == out["default_dir"] == default
    assert out["env"] == str(env_dir)  # JAX_COMPILATION_CACHE_DIR is the user's too
    assert out["user"] == str(user_dir)
    assert out["user_min_secs"] == 1.0  # the user's JAX settings are left alone
    assert out["explicit_default"] == str(user_dir)
    assert out["explicit"] == out["explicit_dir"] == str(explicit)
    assert explicit.is_dir()
    assert out["min_secs"] == 0.0 and out["min_size"] == -1


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert (
        _config.default_compilation_cache_dir() == tmp_path / "jaxkmeans" / "jax-compilation-cache"
    )
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _config.default_compilation_cache_dir() == (
        tmp_path / "home" / ".cache" / "jaxkmeans" / "jax-compilation-cache"
    )


def test_public_names():
    assert "enable_compilation_cache" in jaxkmeans.__all__
    assert "show_config" in jaxkmeans.__all__
    assert (
        jaxkmeans.enable_compilation_cache.__doc__
        and ">>>" in jaxkmeans.enable_compilation_cache.__doc__
    )


def test_show_config_dict_and_report():
    info = jaxkmeans.show_config(mode="dicts")
    versions = info["versions"]
    assert versions["jaxkmeans"] == jaxkmeans.__version__
    for name in ("jax", "jaxlib", "numpy", "optax", "orbax-checkpoint"):
        assert versions[name], name
    assert info["backend"] == "cpu" and info["devices"]
    native = info["native_kernel"]
    assert {"built", "loaded", "enabled", "error"} <= set(native)
    assert native["loaded"] or native["error"]  # loaded, or says why not
    assert set(info["pallas"]) >= {"gpu_triton", "tpu_mosaic"}
    assert {"dir", "enabled", "min_compile_time_secs"} <= set(info["compilation_cache"])
    assert "machine" in info["cpu"]
    json.dumps(info, default=str)

    out = io.StringIO()
    assert jaxkmeans.show_config(file=out) is None
    text = out.getvalue()
    for needle in ("jaxkmeans", jaxkmeans.__version__, "native kernel", "compile cache", "pallas"):
        assert needle in text
    with pytest.raises(ValueError, match="mode"):
        jaxkmeans.show_config(mode="json")


def test_show_config_explains_a_missing_native_kernel():
    text = _config._explain_native({"built": False, "loaded": False, "error": "no compiler"})
    assert "NOT BUILT" in text and "no compiler" in text and "slower" in text
    text = _config._explain_native({"built": True, "loaded": False, "error": "FFI mismatch"})
    assert "NOT LOADED" in text and "FFI mismatch" in text


def test_a_missing_native_kernel_says_how_to_build_it(tmp_path, monkeypatch):
    from jaxkmeans.kernels import native

    package = tmp_path / "jaxkmeans" / "kernels" / "native"
    package.mkdir(parents=True)
    (package / "kmeans_cpu.cc").write_text("")
    monkeypatch.setattr(native, "__file__", str(package / "__init__.py"))
    # an installed package (no setup.py above it): a compiler or not
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert "no C++ compiler was found" in native._not_built_reason()
    monkeypatch.setattr(native.shutil, "which", lambda name: f"/usr/bin/{name}")
    reason = native._not_built_reason()
    assert "compiler (c++) is found now" in reason and "--force-reinstall" in reason
    # a source checkout that was never built: pip install -e . builds it in place
    (tmp_path / "setup.py").write_text("")
    reason = native._not_built_reason()
    assert "source checkout" in reason and "`pip install -e .`" in reason
    text = _config._explain_native({"built": False, "loaded": False, "error": reason})
    assert "NOT BUILT" in text and "pip install -e ." in text and "compiler available" not in text
    assert "bench/RESULTS.md" in text and "2-15x" not in text


def test_cpu_features_parse_proc_cpuinfo():
    info = _config._cpu_features()
    assert info["machine"]
    if os.path.exists("/proc/cpuinfo") and info["flags"] is not None:
        assert all(isinstance(f, str) for f in info["flags"])


def test_cli_show_config(monkeypatch, capsys):
    # keep this test process's JAX settings: the CLI's default cache is off here
    monkeypatch.setenv(_config.CACHE_ENV_VAR, "0")
    monkeypatch.setattr(_config, "_auto_checked", False)
    monkeypatch.setattr(_config, "_auto_path", None)
    assert cli.main(["show-config", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["jaxkmeans"] == jaxkmeans.__version__
    assert cli.main(["show-config"]) == 0
    assert "native kernel" in capsys.readouterr().out
