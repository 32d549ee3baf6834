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


PACKAGE = "ceers_steps"
API_DIR = Path(__file__).resolve().parent / "api"


def _imported_names(module):
    """The names a module binds by importing them (at its top level, or in a top-level if/try)."""
    import ast
    import inspect

    names = set()
    body = list(ast.parse(inspect.getsource(module)).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "handlers", []) + getattr(
                node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            body += node.body
    return names


def _reexported(module):
    """
    The names of ``module.__all__`` it imports from elsewhere (a package's ``__init__``, the
    one-line alias modules at the top): documented where they are defined, once (twice would be
    a duplicate object description).
    """
    return [n for n in getattr(module, "__all__", ()) if n in _imported_names(module)]


class PackageModules(Directive):
    """
    ``.. package-modules:: ceers_steps.fitting``: the package's docstring, then one section per
    module of it (its docstring and what its ``__all__`` defines), found by walking the package
    at build time, so the page keeps up with modules that are split, added or removed.
    """

    required_arguments = 1
    has_content = False
    # :modules-only: leaves out the package's docstring (the page shows it itself).
    option_spec = {"modules-only": directives.flag}

    def run(self):
        import importlib
        import pkgutil

        from sphinx.util.nodes import nested_parse_with_titles

        package = importlib.import_module(self.arguments[0])
        lines = []
        if "modules-only" not in self.options:
            lines += [f".. automodule:: {package.__name__}", "   :no-members:", ""]
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.ispkg:  # a subpackage has a page of its own
                continue
            name = f"{package.__name__}.{info.name}"
            module = importlib.import_module(name)
            others = _reexported(module)
            own = [n for n in getattr(module, "__all__", [None]) if n not in others]
            lines += [name, "-" * len(name), "", f".. automodule:: {name}"]
            # (Sphinx 9 replaces a list given to :members: by autodoc_default_options' True.)
            lines += ["   :members:" if own else "   :no-members:"]
            if own and others:
                lines += [f"   :exclude-members: {', '.join(others)}"]
            lines += [""]
            if others:
                lines += ["Also importable from here: " + ", ".join(
                    f":obj:`~{getattr(module, n).__module__}.{n}`"
                    if hasattr(getattr(module, n), "__qualname__") else f"``{n}``"
                    for n in others), ""]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.arguments[0]), container)
        return container.children


def check_api_pages(app):
    """
    Every subpackage of ceers_steps has its page ``docs/api/ceers_steps.<name>.rst`` and every
    page there names a package that exists (with ``-W`` a missing or stale page fails the build).
    """
    import importlib
    import pkgutil

    from sphinx.util import logging

    log = logging.getLogger(__name__)
    package = importlib.import_module(PACKAGE)
    expected = {PACKAGE} | {f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                            if m.ispkg}
    pages = {p.stem for p in API_DIR.glob("*.rst")}
    for name in sorted(expected - pages):
        log.warning(f"subpackage {name} has no API page: add docs/api/{name}.rst "
                    f"('.. package-modules:: {name}' under its title) and list it in docs/api.rst")
    for name in sorted(pages - expected):
        log.warning(f"docs/api/{name}.rst documents no subpackage of {PACKAGE} (moved or removed?)")


_DOTTED = re.compile(r"`(ceers_steps(?:\.\w+)+)(?:\(\))?`")
_FILE = re.compile(r"`((?:ceers_steps|tests|tools|benchmarks)/[\w/.-]+\.py)\b")


def check_named_paths(app):
    """
    Every ``ceers_steps.x.y`` the pages name in backquotes resolves (a module, or a name in one),
    and every ``ceers_steps/``, ``tests/``, ``tools/`` or ``benchmarks/`` file they name exists:
    a function, module or test that moved fails the build with ``-W`` instead of a stale path.
    """
    import importlib

    from sphinx.util import logging

    log = logging.getLogger(__name__)
    docs = Path(__file__).resolve().parent
    for page in sorted(docs.rglob("*.md")):
        if "_build" in page.parts:
            continue
        for lineno, line in enumerate(page.read_text().splitlines(), 1):
            for path in _FILE.findall(line):
                if not (ROOT / path).is_file():
                    log.warning(f"{path} does not exist (moved or renamed?)",
                                location=(str(page.relative_to(docs).with_suffix("")), lineno))
            for dotted in _DOTTED.findall(line):
                parts = dotted.split(".")
                for cut in range(len(parts), 0, -1):
                    try:
                        obj = importlib.import_module(".".join(parts[:cut]))
                    except ImportError:
                        continue
                    try:
                        for attr in parts[cut:]:
                            obj = getattr(obj, attr)
                    except AttributeError:
                        obj = None
                    break
                if obj is None:
                    log.warning(f"{dotted} does not resolve (moved or renamed?)",
                                location=(str(page.relative_to(docs).with_suffix("")), lineno))


def setup(app):
    app.add_directive("step-arguments", StepArguments)
    app.add_directive("package-modules", PackageModules)
    app.connect("builder-inited", check_api_pages)
    app.connect("builder-inited", check_named_paths)
