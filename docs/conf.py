"""Sphinx configuration of the jaxkmeans documentation.

Build (warnings are errors):

    pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the API pages import jaxkmeans
sys.path.insert(0, os.path.abspath(".."))  # the checkout, installed or not

import jaxkmeans  # noqa: E402

project = "jaxkmeans"
author = "the jaxkmeans authors"
copyright = "2026, the jaxkmeans authors"  # noqa: A001
release = jaxkmeans.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"undoc-members": False, "show-inheritance": False}
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"jaxkmeans {release}"
html_static_path = []

myst_substitutions = {"release": release}
myst_enable_extensions.append("substitution")

# What each public constant is for (the values come from the package itself).
_CONSTANTS = {
    "SQUARED_EUCLIDEAN_DISTANCE": "metric: squared Euclidean distance",
    "COSINE_DISTANCE": "metric: 1 - cos (spherical k-means: rows and centers normalized)",
    "RANDOM_INIT": "init: k distinct rows drawn uniformly (without replacement)",
    "KMEANS_PLUS_PLUS_INIT": "init: greedy k-means++",
    "KMC2_INIT": "init: k-MC2 (Markov chain approximation of k-means++)",
    "KMEANS_PARALLEL_INIT": "init: k-means‖ (k-means parallel, scalable k-means++)",
    "CLUSTER_CENTERS_VAR_NAME": "variable name of the centers in a model_dir",
    "SCORE": "key of the score in results",
    "CLUSTER_INDEX": "key of the nearest center in predict() results",
    "ALL_DISTANCES": "key of the distances to every center in predict() results",
}


def _constants_table(app, docname, source):
    marker = "<!-- constants-table -->"
    if marker not in source[0]:
        return
    missing = sorted(n for n in jaxkmeans.__all__ if n.isupper() and n not in _CONSTANTS)
    if missing:
        raise RuntimeError(f"docs/conf.py: describe the new constants {missing}")
    rows = "\n".join(
        f"| `{name}` | `{getattr(jaxkmeans, name)!r}` | {what} |"
        for name, what in _CONSTANTS.items()
    )
    source[0] = source[0].replace(marker, rows)


def setup(app):
    app.connect("source-read", _constants_table)


# The CLI's help texts (rendered as reStructuredText by sphinx-argparse on api/cli.rst)
# write the tolerance rule as |prev - loss| / (1 + |prev|): keep those bars literal.
rst_prolog = r"""
.. |prev - loss| replace:: \|prev - loss\|
.. |prev| replace:: \|prev\|
"""

smartquotes = False  # keep "--model-dir" and quotes as typed (CLI options, code)
