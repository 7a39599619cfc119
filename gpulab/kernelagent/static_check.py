"""A static checker for candidates: rules read from the source, before anything runs.

Runtime checks see what a candidate *does*; but a candidate runs inside the worker, and
code that can walk the stack, swap a tensor's class or patch a function can also change
what the runtime checks record. The few Python features that make this possible are
easy to spot in the source and never needed by an honest kernel, so they are refused
before the candidate is loaded.

Two public checkers were the anchors:

* KernelBench's ``src/kernelbench/kernel_static_checker.py`` matches *regular
  expressions* on the source: strict errors for try/except fallbacks and ``pass``,
  timing-function reassignment (``torch.cuda.Event.elapsed_time = ...``), threading
  and multiprocessing, and lazy tensors (``_make_subclass``, ``torch.Tensor``
  subclasses); warnings for torch compute ops, streams and FP16 casts. It says itself
  that it is not complete and not a replacement for runtime checks, and that an
  AST-based checker is future work.
* GPU MODE's KernelGuard (the integrity layer of their KernelBot competitions, OpenReview
  "We Let Agents Compete and They Tried to Cheat") layers expert-seeded static rules,
  physics-floor checks on the timings and an LLM judge whose confident findings become
  new rules.

This checker parses the source (:mod:`ast`), so a comment or a string never trips it and
renaming does not dodge it, and it works from an **allow-list**: imports of ``math``,
``numba``, ``torch`` and ``gpulab`` (the package, not its modules) only; no attribute or
name that begins with an underscore (``__class__``, ``__globals__``, ``sys._getframe``,
``torch._C``), no frame or traceback attributes (``f_back``, ``tb_frame``, ``gi_frame``);
none of the builtins that reach around names (``getattr``, ``globals``, ``eval``,
``open``, ...); no assignment to an attribute (monkey-patching, ``out.__class__ = ...``);
no class with a base class (a ``torch.Tensor`` subclass computes when it is read); no
``try`` (KernelBench's fallback rule); no ``torch.overrides`` (its function modes are
the torch-call recorder). A numba candidate may also not use NumPy or ``.numpy()`` /
``.tolist()`` (host compute on the outputs), and must define a ``@gpulab.kernel`` and
launch it; the runtime then requires a launch with a non-empty grid that is given the
output.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["Finding", "check_source", "ALLOWED_IMPORTS", "FORBIDDEN_NAMES", "FORBIDDEN_ATTRIBUTES"]

#: modules a candidate may import (``import x``, ``from x import y``), by kind
ALLOWED_IMPORTS = {
    "numba": frozenset({"math", "numba", "numba.cuda", "torch", "gpulab"}),
    "torch": frozenset({"math", "numba", "numba.cuda", "torch", "torch.nn", "torch.nn.functional", "gpulab"}),
}

#: builtins and names that reach objects around the name system, run text as code, or
#: read files
FORBIDDEN_NAMES = frozenset("""
    eval exec compile __import__ globals locals vars getattr setattr delattr hasattr open
    breakpoint input memoryview help exit quit object super classmethod staticmethod property
""".split())

#: attributes of frames, tracebacks, generators and coroutines (the way up the stack),
#: and torch's function-mode machinery
FORBIDDEN_ATTRIBUTES = frozenset("""
    f_back f_globals f_locals f_code f_builtins f_trace tb_frame tb_next gi_frame gi_code
    cr_frame cr_code ag_frame ag_code overrides library
""".split())

#: more, for numba candidates: computing on the host instead of in a kernel
HOST_COMPUTE_ATTRIBUTES = frozenset({"numpy", "tolist"})


@dataclass(frozen=True)
class Finding:
    rule: str       # a short name: import, private_name, frame_access, ...
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class _Checker(ast.NodeVisitor):
    def __init__(self, kind: str):
        self.kind = kind
        self.findings: list[Finding] = []
        self.kernels: set[str] = set()
        self.launched: set[str] = set()
        self.defines_solve = False

    def flag(self, node, rule: str, message: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), message))

    # -- imports: an allow-list
    def _check_module(self, node, module: str) -> None:
        if module not in ALLOWED_IMPORTS[self.kind]:
            allowed = ", ".join(sorted(ALLOWED_IMPORTS[self.kind]))
            self.flag(node, "import", f"imports {module!r}; a candidate may import only {allowed}")

    def visit_Import(self, node):
        for alias in node.names:
            self._check_module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        if node.level:
            self.flag(node, "import", "relative imports are not allowed")
        self._check_module(node, module)
        for alias in node.names:
            if alias.name.startswith("_") or alias.name == "*":
                self.flag(node, "private_name", f"imports {alias.name!r} from {module}")
            elif module == "gpulab" and alias.name not in ("kernel", "device", "ON_GPU", "SIMULATOR"):
                self.flag(node, "import", f"imports {alias.name!r} from gpulab; a candidate may use "
                                          "gpulab.kernel, gpulab.device, gpulab.ON_GPU and gpulab.SIMULATOR")
        self.generic_visit(node)

    # -- names and attributes
    def visit_Name(self, node):
        if node.id.startswith("__"):
            self.flag(node, "private_name", f"uses the name {node.id!r}")
        elif node.id in FORBIDDEN_NAMES:
            self.flag(node, "forbidden_name", f"uses {node.id!r}, which reaches around names or runs text")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        name = node.attr
        if name.startswith("_"):
            self.flag(node, "private_name", f"reads the private attribute .{name}")
        elif name in FORBIDDEN_ATTRIBUTES:
            rule = "frame_access" if name[:2] in ("f_", "tb", "gi", "cr", "ag") else "function_mode"
            self.flag(node, rule, f"uses .{name} (the stack, or torch's function modes)")
        elif self.kind == "numba" and name in HOST_COMPUTE_ATTRIBUTES:
            self.flag(node, "host_compute", f"calls .{name}(): a numba candidate computes in kernels, not on the host")
        if name == "kernel" and isinstance(node.value, ast.Name) and node.value.id == "gpulab":
            pass
        elif isinstance(node.value, ast.Name) and node.value.id == "gpulab" and name not in (
                "kernel", "device", "ON_GPU", "SIMULATOR"):
            self.flag(node, "import", f"uses gpulab.{name}; a candidate may use gpulab.kernel, "
                                      "gpulab.device, gpulab.ON_GPU and gpulab.SIMULATOR")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.flag(node, "attribute_assignment",
                      f"assigns to the attribute .{name} (patching an object is not allowed)")
        self.generic_visit(node)

    # -- definitions and statements
    def visit_ClassDef(self, node):
        if node.bases or node.keywords:
            self.flag(node, "subclass", f"class {node.name} has a base class (a tensor subclass can "
                                        "compute when it is read)")
        self.generic_visit(node)

    def _decorated_kernel(self, node) -> bool:
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(target, ast.Attribute) and target.attr == "kernel":
                return True
            if isinstance(target, ast.Name) and target.id == "kernel":
                return True
        return False

    def visit_FunctionDef(self, node):
        if node.name.startswith("__"):
            self.flag(node, "private_name", f"defines {node.name!r}")
        if self._decorated_kernel(node):
            self.kernels.add(node.name)
        if node.name == "solve":
            self.defines_solve = True
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id == "solve":
                self.defines_solve = True
        self.generic_visit(node)

    def visit_Try(self, node):
        self.flag(node, "try_except", "uses try/except (a fallback when the kernel fails; KernelBench's rule)")
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def visit_Call(self, node):
        # kernel[grid, block](...): a launch of a kernel defined here
        if isinstance(node.func, ast.Subscript) and isinstance(node.func.value, ast.Name):
            self.launched.add(node.func.value.id)
        if isinstance(node.func, ast.Name) and node.func.id == "type" and len(node.args) > 1:
            self.flag(node, "subclass", "type(name, bases, dict) makes a class at run time")
        self.generic_visit(node)


def check_source(source: str, kind: str) -> list[Finding]:
    """The static rules ``source`` breaks (empty: none). ``kind``: ``"numba"`` or ``"torch"``."""
    if kind not in ALLOWED_IMPORTS:
        raise ValueError(f"kind must be 'numba' or 'torch', got {kind!r}")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []           # loading reports the syntax error, with its line
    checker = _Checker(kind)
    checker.visit(tree)
    if not checker.defines_solve:
        checker.flag(tree, "no_solve", "defines no solve(*inputs, out)")
    if kind == "numba":
        if not checker.kernels:
            checker.flag(tree, "no_kernel", "defines no @gpulab.kernel function")
        elif not checker.kernels & checker.launched:
            checker.flag(tree, "no_kernel", "never launches its kernel as kernel[grid, block](...)")
    return checker.findings
