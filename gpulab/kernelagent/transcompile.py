"""CUDA to CPU, the idea of HPCTransCompile, for simple index kernels.

HPCTransCompile builds pairs of CUDA kernels and equivalent CPU code so models can learn to
translate between them, and checks each pair agrees. The mapping at its core is plain:
a CUDA thread index becomes a loop variable, the grid becomes the loop's range, and the
threads' independence becomes a *parallel* loop (``numba.prange``, OpenMP's
``parallel for``). An early ``return`` of an out-of-range thread becomes ``continue``.

:func:`translate` does that on the syntax tree of a ``@gpulab.kernel`` that indexes with
``cuda.grid(1)`` or ``cuda.grid(2)`` and uses nothing else from ``cuda``: shared memory,
barriers and atomics have no meaning for independent loop iterations, so those kernels
are refused with a clear error rather than translated wrongly.

    cpu = translate(vector_add_kernel)
    cpu[grid, block](a, b, out)            # same launch syntax, runs on CPU cores
    print(cpu.source)                      # the generated code
"""
from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np
import torch

__all__ = ["translate", "CpuKernel", "TranslationError"]


class TranslationError(ValueError):
    """The kernel uses something that has no direct CPU-loop equivalent."""


class _Returns(ast.NodeTransformer):
    """Thread-exit ``return`` -> ``continue`` (refused inside the kernel's own loops)."""

    def __init__(self):
        self.depth = 0

    def _loop(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        return node

    visit_For = visit_While = _loop

    def visit_Return(self, node):
        if node.value is not None:
            raise TranslationError("a kernel cannot return a value")
        if self.depth:
            raise TranslationError("a `return` inside a loop of the kernel cannot become `continue`")
        return ast.copy_location(ast.Continue(), node)


def _grid_assignment(stmt) -> tuple[list[str], int] | None:
    """``i = cuda.grid(1)`` -> (["i"], 1); ``x, y = cuda.grid(2)`` -> (["x", "y"], 2)."""
    if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)):
        return None
    call = stmt.value
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "grid"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "cuda"):
        return None
    dims = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
    target = stmt.targets[0]
    names = [target.id] if isinstance(target, ast.Name) else [e.id for e in getattr(target, "elts", [])]
    if dims not in (1, 2) or len(names) != dims:
        raise TranslationError("use `i = cuda.grid(1)` or `x, y = cuda.grid(2)`")
    return names, dims


def _translate_source(py_func) -> tuple[str, str, int]:
    source = textwrap.dedent(inspect.getsource(py_func))
    fn = ast.parse(source).body[0]
    if not isinstance(fn, ast.FunctionDef):
        raise TranslationError("expected a kernel function")
    fn.decorator_list = []
    index, body = None, []
    for stmt in fn.body:
        found = _grid_assignment(stmt)
        if found:
            if index is not None:
                raise TranslationError("cuda.grid(...) may appear only once")
            index = found
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and not body and index is None:
            continue  # the docstring
        body.append(stmt)
    if index is None:
        raise TranslationError(f"{fn.name} does not index with cuda.grid(1) or cuda.grid(2)")
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cuda":
            raise TranslationError(
                f"{fn.name} uses cuda.{node.attr}: only index kernels (cuda.grid) translate to "
                "parallel CPU loops; shared memory, barriers and atomics need a different design")
    body = [_Returns().visit(s) for s in body]
    names, dims = index
    args = [a.arg for a in fn.args.args]
    name = fn.name + "_cpu"
    if dims == 1:
        loop = ast.parse(f"for {names[0]} in prange(_nx):\n    pass").body[0]
        loop.body = body
    else:
        loop = ast.parse(f"for {names[1]} in prange(_ny):\n    for {names[0]} in range(_nx):\n        pass").body[0]
        loop.body[0].body = body
    new = ast.parse(f"def {name}({', '.join(args + ['_nx', '_ny'])}):\n    pass").body[0]
    new.body = [loop]
    module = ast.fix_missing_locations(ast.Module(body=[new], type_ignores=[]))
    return ast.unparse(module) + "\n", name, dims


class CpuKernel:
    """A translated kernel: launch it like the original, ``k[grid, block](*args)``."""

    def __init__(self, kernel, parallel: bool = True):
        py_func = getattr(kernel, "py_func", kernel)
        self.source, self.name, self.dims = _translate_source(py_func)
        namespace = dict(py_func.__globals__)
        try:
            import numba

            namespace["prange"] = numba.prange
            exec(compile(self.source, f"<translated {self.name}>", "exec"), namespace)
            self.python_func = namespace[self.name]
            self.func = numba.njit(parallel=parallel, cache=False)(self.python_func) if parallel \
                else self.python_func
            self.backend = "numba.njit(parallel=True)" if parallel else "plain Python loops"
        except ImportError:
            namespace["prange"] = range
            exec(compile(self.source, f"<translated {self.name}>", "exec"), namespace)
            self.func = self.python_func = namespace[self.name]
            self.backend = "plain Python loops"

    def __getitem__(self, config):
        grid, block = config[0], config[1]
        grid = (grid,) if isinstance(grid, int) else tuple(grid)
        block = (block,) if isinstance(block, int) else tuple(block)
        grid, block = grid + (1,) * (2 - len(grid)), block + (1,) * (2 - len(block))
        nx, ny = grid[0] * block[0], grid[1] * block[1]

        def launch(*args):
            arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in args]
            try:
                self.func(*arrays, nx, ny)
            except Exception as exc:
                if self.func is self.python_func:
                    raise
                # numba could not compile it: say so, run the same loops in Python
                self.func, self.backend = self.python_func, f"plain Python loops (numba failed: {type(exc).__name__})"
                self.func(*arrays, nx, ny)
            for a, arr in zip(args, arrays):
                if isinstance(a, torch.Tensor) and a.device.type != "cpu":
                    a.copy_(torch.from_numpy(np.asarray(arr)))
        return launch


def translate(kernel, parallel: bool = True) -> CpuKernel:
    """Translate a ``@gpulab.kernel`` index kernel to a parallel CPU loop (see module doc)."""
    return CpuKernel(kernel, parallel=parallel)
