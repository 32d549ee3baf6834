"""Sphinx configuration of the ceers-steps documentation (``sphinx-build -W docs docs/_build``)."""

import re
import sys
from importlib.metadata import version as _version
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "ceers-steps"
author = "ceers-steps developers"
release = _version("ceers-steps")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated"]
# Headings become link targets (``page.md#a-heading``), as on GitHub.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
# Only what a module lists in __all__ is documented (its public API).
autosummary_ignore_module_all = False
autoclass_content = "class"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# numpydoc "Parameters" types name things in words ("str or Path", "array (n, 2)"): not targets.
nitpicky = False

html_theme = "sphinx_rtd_theme"
html_title = f"ceers-steps {release}"
html_static_path = []


_SPEC_LINE = re.compile(r"^\s*(\w+)\s*=\s*(.+?\))\s*(?:#\s*(.*))?$")


def spec_rows(step_class):
    """(name, type and default, comment) of every parameter in a step's ``spec``."""
    rows = []
    for line in step_class.spec.splitlines():
        match = _SPEC_LINE.match(line)
        if match:
            rows.append(match.groups())
    return rows


class StepArguments(Directive):
    """``.. step-arguments:: ceers_steps.CatalogStep``: the step's spec as a table."""

    required_arguments = 1
    has_content = False
    option_spec = {"skip": directives.unchanged}

    def run(self):
        import importlib

        module, _, name = self.arguments[0].rpartition(".")
        step_class = getattr(importlib.import_module(module), name)
        skip = set((self.options.get("skip") or "").split())
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 25 55", "",
                 "   * - argument", "     - type (default)", "     - meaning"]
        for pname, kind, comment in spec_rows(step_class):
            if pname in skip:
                continue
            meaning = (comment or "-").replace("*", r"\*")
            lines += [f"   * - ``--{pname}``", f"     - ``{kind}``", f"     - {meaning}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset,
                                container)
        return container.children


def setup(app):
    app.add_directive("step-arguments", StepArguments)
