"""Layers run one way: core <- families <- course (docs/AUTHORING.md, COURSE.md).

* **core**: the modules directly in ``gpulab/`` (runtime, launch, harness, bench, plots,
  sandbox, ...). They know no chapter.
* **families**: the subpackages ``gpulab/<family>/`` (torch twins and numba kernels).
  They use the core and, where a chapter builds on one, an earlier family.
* **course**: ``gpulab/course/`` (checks, exercises, grading, cli), on top of both.

Read from the source with ``ast``, never by importing it, so a violation is reported
with its file and line even when the module would not import. The rules:

1. the core imports no family and no course;
2. no family imports the course;
3. no lecture notebook (``notebooks/*.ipynb``) imports a checks module
   (``gpulab.course.checks...`` or a family's ``assignment``);
4. nothing names a module of another layer as a string (``"gpulab.kernelagent.worker"``
   in an argv, an ``import_module`` argument): register through the core instead.

A family's ``assignment.py`` (the old home of graded checks) fails rule 2 if it imports
the course, and the contract test refuses it next to the chapter's checks module.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gpulab"
CORE, COURSE = "core", "course"

# a dotted module path of the package inside a string, e.g. "gpulab.kernelagent.worker"
_MODULE_IN_TEXT = re.compile(r"\bgpulab(?:\.[A-Za-z_]\w*)+")


def layer_of_module(dotted: str) -> str | None:
    """The layer of ``gpulab.x...``: core, course or the family's name (None: not ours)."""
    parts = dotted.split(".")
    if parts[0] != "gpulab":
        return None
    if len(parts) == 1:
        return CORE
    top = parts[1]
    if top == COURSE:
        return COURSE
    if (PACKAGE / top).is_dir() and (PACKAGE / top / "__init__.py").exists():
        return top  # a family
    return CORE     # a top-level module, or a name inside gpulab/__init__


def layer_of_file(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return CORE if len(rel.parts) == 1 else (COURSE if rel.parts[0] == COURSE else rel.parts[0])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(tree: ast.AST, importer: str = "", is_package: bool = False):
    """(line, dotted module) for every import in ``tree``; ``from a import b`` gives a.b too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, importer, is_package)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (text for readers, not module names used by code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def named_modules(tree: ast.AST):
    """(line, dotted module) for every ``gpulab.x`` written inside a string constant."""
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for match in _MODULE_IN_TEXT.finditer(node.value):
                yield node.lineno, match.group(0)


def import_may_cross(src: str, dst: str) -> bool:
    """May a file of layer ``src`` import a module of layer ``dst``?"""
    if dst in (None, src) or dst == CORE:
        return True
    if src == COURSE:
        return True             # the course sits on top of every family
    if src == CORE or dst == COURSE:
        return False
    return True                 # a family may build on an earlier family


def package_violations(path: Path) -> list[str]:
    src = layer_of_file(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT)
    found = []
    for line, mod in imported_modules(tree, module_name(path), path.name == "__init__.py"):
        dst = layer_of_module(mod)
        if not import_may_cross(src, dst):
            found.append(f"{rel}:{line}: the {src} layer imports {mod} ({dst} layer)")
    for line, mod in named_modules(tree):
        dst = layer_of_module(mod)
        if dst not in (None, src, CORE):
            found.append(f"{rel}:{line}: names the module {mod!r} of the {dst} layer as a string; "
                         "register it through the core instead")
    return sorted(set(found))


def is_checks_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return dotted.startswith("gpulab.course.checks") or (
        len(parts) >= 3 and parts[0] == "gpulab" and parts[2] == "assignment")


def notebook_code(path: Path):
    """(cell index, Python source) of each code cell, IPython magics and shell lines blanked."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            lines = [("" if line.lstrip().startswith(("%", "!")) else line)
                     for line in cell.source.splitlines()]
            yield index, "\n".join(lines)


def notebook_violations(path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    found = []
    for index, source in notebook_code(path):
        try:
            tree = ast.parse(source)
        except SyntaxError as error:
            found.append(f"{rel}, cell {index}: does not parse ({error.msg}), imports not checked")
            continue
        for line, mod in imported_modules(tree):
            if is_checks_module(mod):
                found.append(f"{rel}, cell {index}, line {line}: the lecture imports the checks module {mod}")
    return sorted(set(found))


# ------------------------------------------------------------------ which files, which moves

def _package_params():
    return [pytest.param(path, id=str(path.relative_to(ROOT))) for path in sorted(PACKAGE.rglob("*.py"))]


def _notebook_params():
    return [pytest.param(path, id=path.name) for path in sorted((ROOT / "notebooks").glob("*.ipynb"))]


@pytest.mark.parametrize("path", list(_package_params()))
def test_package_layers_run_one_way(path):
    violations = package_violations(path)
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("path", list(_notebook_params()))
def test_lectures_do_not_import_checks(path):
    violations = notebook_violations(path)
    assert not violations, "\n".join(violations)


# ------------------------------------------------------------------ the checker itself

def _violations_of(tmp_path, rel: str, source: str) -> list[str]:
    """Run the package rules on a made-up file placed at ``gpulab/<rel>``."""
    global PACKAGE, ROOT
    saved = PACKAGE, ROOT
    fake_root = tmp_path
    fake_pkg = fake_root / "gpulab"
    for family in ("splat", "moe", "course"):
        (fake_pkg / family).mkdir(parents=True, exist_ok=True)
        (fake_pkg / family / "__init__.py").write_text("")
    target = fake_pkg / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    PACKAGE, ROOT = fake_pkg, fake_root
    try:
        return package_violations(target)
    finally:
        PACKAGE, ROOT = saved


@pytest.mark.parametrize("rel, source, expected", [
    ("harness.py", "from gpulab.splat import render\n", "the core layer imports gpulab.splat"),
    ("harness.py", "from .course import grading\n", "the core layer imports gpulab.course"),
    ("moe/kernels.py", "from ..course.feedback import ok\n", "the moe layer imports gpulab.course"),
    ("moe/kernels.py", "import gpulab.course.guard\n", "the moe layer imports gpulab.course"),
    ("course/guard.py", "ALLOWED = 'gpulab.moe.worker'\n", "names the module 'gpulab.moe.worker'"),
    ("moe/offload.py", "def f():\n    return ['-m', 'gpulab.course.cli']\n",
     "names the module 'gpulab.course.cli'"),
])
def test_checker_reports_each_kind_with_file_and_line(tmp_path, rel, source, expected):
    violations = _violations_of(tmp_path, rel, source)
    assert len(violations) >= 1 and expected in violations[0], violations
    assert violations[0].startswith(f"gpulab/{rel}:")   # file and line, for the reader


@pytest.mark.parametrize("rel, source", [
    ("course/cli.py", "from gpulab.splat import render\nfrom gpulab import runtime\n"),
    ("moe/offload.py", "from ..splat import render\nfrom .. import runtime\n"),
    ("sandbox.py", '"""Used by :mod:`gpulab.course.guard`."""\nX = "gpulab.runtime"\n'),
    ("course/registry.py", "def f(stem):\n    return f'gpulab.course.checks.ch{stem}'\n"),
])
def test_checker_accepts_the_allowed_directions(tmp_path, rel, source):
    assert _violations_of(tmp_path, rel, source) == []


def test_notebook_rule_catches_assignment_and_checks_imports(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\nimport gpulab"),
                nbformat.v4.new_code_cell("from gpulab.moe.assignment import check_task1"),
                nbformat.v4.new_code_cell("import gpulab.course.checks.ch06_gaussian_splatting as c")]
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        path = tmp_path / "nb.ipynb"
        nbformat.write(nb, path)
        found = notebook_violations(path)
    finally:
        ROOT = saved
    where = sorted({v.split(":")[0] for v in found})
    assert where == ["nb.ipynb, cell 1, line 1", "nb.ipynb, cell 2, line 1"], found   # not the %magic cell
    assert any("gpulab.moe.assignment" in v for v in found) and any("checks.ch06" in v for v in found)
