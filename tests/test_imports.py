"""`import jaxkmeans` pays only for what is used: heavy optional modules load on first use."""

import json
import os
import subprocess
import sys

# Never imported by `import jaxkmeans` (orbax and tensorstore load at the first checkpoint
# read or write; the others belong to optional extras or the user's own code).
HEAVY = ("orbax", "tensorstore", "matplotlib", "sklearn", "scipy", "pandas", "pyarrow")


def _loaded_after(code: str, modules: tuple[str, ...] = HEAVY) -> dict[str, bool]:
    script = (
        f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_jaxkmeans_loads_no_heavy_module():
    # the command line module and show_config (which reads versions from package
    # metadata) stay as light as the package
    loaded = _loaded_after(
        "import io, jaxkmeans, jaxkmeans.cli, jaxkmeans.export\n"
        "jaxkmeans.show_config(file=io.StringIO())"
    )
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}


def test_checkpoint_imports_orbax_on_first_save(tmp_path):
    model = str(tmp_path / "model")
    loaded = _loaded_after(
        "import numpy as np\n"
        "from jaxkmeans.checkpoint import Checkpointer\n"
        f"ckpt = Checkpointer({model!r})\n"
        "assert 'orbax' not in sys.modules, 'orbax loaded before the first save'\n"
        "ckpt.save(1, {'centers': np.ones((2, 3), np.float32)}, {'num_clusters': 2})\n"
        "assert ckpt.restore()[0] == 1"
    )
    assert loaded["orbax"]


def test_a_dense_fit_does_not_import_jax_sparse():
    # Sparse input is recognised without importing jax.experimental.sparse (0.4 s on a
    # first fit): a JAX sparse array exists only once the user imported it.
    loaded = _loaded_after(
        "import numpy as np, jax, jaxkmeans\n"
        "x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)\n"
        "jaxkmeans.fit(jax.random.PRNGKey(0), x, 3, max_iter=3)\n"
        "jaxkmeans.assign(x, x[:3])",
        ("jax.experimental.sparse",),
    )
    assert loaded == {"jax.experimental.sparse": False}


def test_sparse_input_is_recognised_once_jax_sparse_is_imported():
    import numpy as np
    from jax.experimental import sparse as jsparse

    from jaxkmeans.kernels.sparse import is_sparse

    x = np.eye(4, dtype=np.float32)
    assert is_sparse(jsparse.BCOO.fromdense(x))
    assert not is_sparse(x)


def test_lloyd_fits_do_not_import_optax_until_a_mini_batch_step():
    # optax (about 0.2 s of import) serves the mini-batch update only.
    code = (
        "import numpy as np, jax, jaxkmeans\n"
        "x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)\n"
        "jaxkmeans.fit(jax.random.PRNGKey(0), x, 3, max_iter=3)\n"
        "jaxkmeans.assign(x, x[:3])\n"
        "assert 'optax' not in sys.modules, 'optax loaded by a Lloyd fit'\n"
        "state = jaxkmeans.minibatch_step(jaxkmeans.KMeansState.create(x[:3]), x)\n"
    )
    assert _loaded_after(code, ("optax",)) == {"optax": True}
