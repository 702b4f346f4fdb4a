"""Sphinx configuration of the backprop-oracles documentation.

Build: ``tox -e docs`` (HTML with warnings as errors, then the examples as doctests), or
``sphinx-build -W --keep-going -b html docs docs/_build/html`` in an environment with the
``docs`` and ``all`` extras. The generated parts (API stubs, figures, the pitfalls catalog,
the benchmark tables) come from ``_ext/oracles_docs.py``.
"""

import sys
import warnings
from importlib.metadata import version as _version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "backprop-oracles"
author = "the backprop-oracles authors"
copyright = "backprop-oracles authors, MIT licence"
release = _version("backprop-oracles")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
    "oracles_docs",
]

exclude_patterns = ["_build", "examples/*.py"]
templates_path = []
root_doc = "index"

# --- API reference -----------------------------------------------------------------
# Stubs are written by oracles_docs from each module's __all__; autosummary only
# makes the tables.
autosummary_generate = False
autodoc_default_options = {}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections say it in words
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc warns (and would drop the text) for sections it does not know; oracles_docs
# keeps them as rubrics ("Derivation" in every reference VJP, "Conventions"...). The warning
# comes from numpydoc's signature hook, which parses the raw docstring again.
warnings.filterwarnings("ignore", message="Unknown section", category=UserWarning)

# --- doctests ----------------------------------------------------------------------
# The docstrings' own examples are doctested by pytest (--doctest-modules); the doctest
# builder runs the examples written on these pages (``.. doctest::`` / ``.. testcode::``).
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import numpy as np
np.set_printoptions(precision=6, suppress=True)
"""

# --- HTML --------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"backprop-oracles {release}"
# No left sidebar: the pages are flat, the top bar lists them all.
html_sidebars = {"**": []}
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
html_static_path = []
