"""Sphinx configuration: the site is built from the package's docstrings (autodoc with
napoleon for the NumPy-style sections) and the Markdown pages beside this file (MyST).
Nothing is fetched at build time."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "fastconv"
author = "fastconv developers"
copyright = "fastconv developers"

import fastconv  # noqa: E402

release = version = fastconv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "both"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False  # "name : text" lines of the docstrings stay together

html_theme = "alabaster"
html_title = f"fastconv {release}"
html_theme_options = {"description": "A convolution engine for NumPy arrays",
                      "page_width": "1160px", "sidebar_width": "260px"}
