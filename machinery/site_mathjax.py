"""MkDocs hook: serve MathJax from the site itself, so the maths renders offline.

The files come from the Python package django-static-mathjax (docs/requirements.txt
pins it): a wheel of MathJax 3.2.2 built from MathJax's source, with no dependencies;
Django is not needed to use its files. Only what the pages load is copied: the
TeX-to-CommonHTML bundle and its fonts, which MathJax fetches relative to the bundle's
own address. Nothing is committed, nothing comes from a CDN.
"""
import importlib.util
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError

BUNDLE = "tex-mml-chtml.js"
FONTS = Path("output", "chtml", "fonts", "woff-v2")
TARGET = Path("javascripts", "mathjax")  # extra_javascript names TARGET / BUNDLE


def mathjax_folder():
    """The es5 folder of the installed MathJax, else a one-line error: how to get it."""
    spec = importlib.util.find_spec("mathjax")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root, "static", "mathjax", "es5")
        if (folder / BUNDLE).is_file():
            return folder
    raise PluginError("MathJax is not installed: pip install -r docs/requirements.txt")


def on_config(config):
    """Fail before building anything when MathJax is missing."""
    mathjax_folder()


def on_post_build(config):
    """Copy the bundle and its fonts into the built site (also under `mkdocs serve`)."""
    source, target = mathjax_folder(), Path(config["site_dir"], TARGET)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / BUNDLE, target / BUNDLE)
    shutil.copytree(source / FONTS, target / FONTS, dirs_exist_ok=True)
