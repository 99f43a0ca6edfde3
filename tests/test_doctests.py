"""The docstring examples (``>>>`` blocks) of every jaxkmeans module run and pass.

Run with the standard :mod:`doctest` module, one module at a time, so a failure names
the module; the documentation site shows the same examples.
"""

import doctest
import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import re

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

import jaxkmeans

# Modules whose import has side effects or needs more than the test extra.
_SKIP = {"jaxkmeans.__main__"}

# Modules that must carry examples (a module that loses all of them fails here).
EXPECTED_WITH_EXAMPLES = {
    "jaxkmeans",
    "jaxkmeans._config",
    "jaxkmeans.assignment",
    "jaxkmeans.checkpoint",
    "jaxkmeans.estimator",
    "jaxkmeans.export",
    "jaxkmeans.fitting",
    "jaxkmeans.initializers",
    "jaxkmeans.metrics",
    "jaxkmeans.sharding",
    "jaxkmeans.sklearn",
    "jaxkmeans.state",
    "jaxkmeans.updates",
}

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    names = ["jaxkmeans"]
    for info in pkgutil.walk_packages(jaxkmeans.__path__, prefix="jaxkmeans."):
        origin = importlib.util.find_spec(info.name).origin or ""
        if info.name not in _SKIP and origin.endswith(".py"):  # not the compiled kernel
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()


# JAX settings an example may change (enable_compilation_cache's does): restored after
# each module so that one module's examples cannot change how the next one runs.
_JAX_SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
    "jax_compilation_cache_max_size",
)


def _run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    saved = {k: getattr(jax.config, k) for k in _JAX_SETTINGS}
    try:
        for test in finder.find(module, name):  # each docstring sees its module's globals
            runner.run(test)
    finally:
        if any(getattr(jax.config, k) != v for k, v in saved.items()):
            for k, v in saved.items():
                jax.config.update(k, v)
            compilation_cache.reset_cache()
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_pass(name):
    if name == "jaxkmeans.sklearn":
        pytest.importorskip("sklearn")
    result = _run(name)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail"
    if name in EXPECTED_WITH_EXAMPLES:
        assert result.attempted > 0, f"{name} has no docstring examples"


def _public_objects():
    out = {}
    for n in jaxkmeans.__all__:
        obj = getattr(jaxkmeans, n)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out[f"jaxkmeans.{n}"] = obj
    try:
        import jaxkmeans.sklearn as sk
    except ImportError:  # pragma: no cover - the test extra installs scikit-learn
        return out
    for n in sk.__all__:
        obj = getattr(sk, n)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out[f"jaxkmeans.sklearn.{n}"] = obj
    return out


def _has_example(obj):
    finder = doctest.DocTestFinder(recurse=False)
    return any(t.examples for t in finder.find(obj, obj.__name__, globs={}))


def test_every_public_name_has_an_example():
    missing = sorted(n for n, obj in _public_objects().items() if not _has_example(obj))
    assert not missing, f"public names without a docstring example: {missing}"


def test_module_list_is_complete():
    for name in EXPECTED_WITH_EXAMPLES:
        assert name in MODULES


DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_build" not in p.parts),
)
def test_docs_python_blocks_run(page, tmp_path, monkeypatch):
    """The ```python blocks of each documentation page run, in order, in one namespace
    (paths under /tmp/ go to a fresh temporary directory)."""
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    text = (DOCS / page).read_text()
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)):
        code = block.replace('"/tmp/', f'"{tmp_path}/')
        exec(compile(code, f"docs/{page} python block {i + 1}", "exec"), namespace)
