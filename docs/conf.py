"""Sphinx configuration of the sctrvae documentation."""

import os
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
info = metadata("sctrvae")

project = info["Name"]
author = info["Author"] or "sctrvae developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

# API reference: one page per object, generated from the docstrings (numpydoc style)
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
default_role = "literal"

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# the notebooks (tutorials/, linked as docs/tutorials) are stored with their outputs so GitHub
# shows the figures, and re-executed at every build so that an API change fails the docs
nb_execution_mode = "force"
nb_execution_timeout = int(os.environ.get("SCTRVAE_NB_TIMEOUT", 900))
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# intersphinx needs the network: enable it with SCTRVAE_DOCS_INTERSPHINX=1 (the docs workflow does)
if os.environ.get("SCTRVAE_DOCS_INTERSPHINX"):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
    }

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_title = project
html_theme_options = {
    "repository_url": "https://github.com/sctrvae/sctrvae",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
