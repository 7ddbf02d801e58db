"""Sphinx configuration of jrelu6's documentation.

Build it from the repository root (what CI runs; warnings are errors):

    python -m pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# The checkout's jrelu6 (autodoc imports it), whether or not it is pip-installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jrelu6

project = "jrelu6"
author = "jrelu6 developers"
copyright = "jrelu6 developers"
release = jrelu6.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $...$ maths, ::: fences, and anchors for the headings that pages link to.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# The docstrings are Google style, with Sphinx roles and `.. math::` inside.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show `ArrayLike` as written, not expanded into its eight member types.
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}

html_theme = "furo"
html_title = f"jrelu6 {release}"
