"""Graded checks of chapter 17's assignment.

1. Write a kernel that passes the verifier for the ``rmsnorm`` task.
2. A mystery candidate passes the naive check: name its loophole and write a check that
   catches it (and still accepts a correct candidate).
3. Add a loophole check of your own to the verifier: ``x * (x > 0)`` passes every random
   test as a ReLU, but not the inputs your check adds.

Candidates always run through the sandboxed :class:`~.verifier.Verifier`, so a crashing or
hanging answer costs the task, not the notebook or the grader.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..course.feedback import require, task
from .planted import RELU_SOURCE
from .tasks import AXPY_ALPHA
from .verifier import FLAGS, LoopholeCheck, Verifier, _load_in_process

__all__ = ["check_task1", "check_task2", "check_task3", "MYSTERY_SOURCE", "AXPY_SOURCE",
           "RELU_MASK_SOURCE", "load_solve"]

_HEADER = "import math\nimport numba\nimport torch\nfrom numba import cuda\nimport gpulab\n"

AXPY_SOURCE = _HEADER + f'''

@gpulab.kernel
def axpy_kernel(x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = numba.float32({AXPY_ALPHA}) * x[i] + y[i]


def solve(x, y, out):
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)
'''

#: the mystery candidate of task 2 (an axpy that remembers)
MYSTERY_SOURCE = AXPY_SOURCE.replace(f'''def solve(x, y, out):
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)''', f'''_seen = {{}}


def solve(x, y, out):
    if out.numel() in _seen:
        out.copy_(_seen[out.numel()])
        return
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)
    _seen[out.numel()] = out.clone()''')

#: task 3's sneaky ReLU: x * (x > 0) is NaN at x = -inf, where ReLU is 0
RELU_MASK_SOURCE = _HEADER + '''

@gpulab.kernel
def relu_mask(x, out):
    i = cuda.grid(1)
    if i < out.size:
        v = x[i]
        out[i] = v * numba.float32(v > numba.float32(0.0))


def solve(x, out):
    relu_mask[math.ceil(out.numel() / 128), 128](x, out)
'''


def load_solve(source: str):
    """``solve`` of a trusted source, loaded in this process (a fresh module each call)."""
    return _load_in_process(source)


@contextlib.contextmanager
def _verifier(verifier, extra_checks=()):
    if verifier is None:
        with Verifier(extra_checks=extra_checks) as v:
            yield v
        return
    saved = verifier.extra_checks
    verifier.extra_checks = list(extra_checks)
    try:
        yield verifier
    finally:
        verifier.extra_checks = saved


def _source_of(answer) -> str:
    require(isinstance(answer, (str, Path)), "pass the path of your candidate file (or its source text)")
    text = str(answer)
    if "\n" not in text and Path(text).exists():
        text = Path(text).read_text()
    if "raise NotImplementedError" in text and "gpulab.kernel" not in text:
        raise NotImplementedError("the candidate is still the exercise stub")
    require("def solve" in text, "your candidate must define solve(x, weight, out)")
    return text


def check_task1(answer, verifier: Verifier | None = None):
    """Task 1: ``answer`` (a file path or source text) must pass the verifier on rmsnorm."""
    with task("Task 1: an RMS-norm kernel that passes the verifier"):
        source = _source_of(answer)
        require("gpulab.kernel" in source, "compute with a @gpulab.kernel kernel, not with torch")
        with _verifier(verifier) as v:
            verdict = v.verify("rmsnorm", source, kind="numba")
        if "NotImplementedError" in verdict.message:
            raise NotImplementedError(verdict.message)
        require(verdict.passed, f"the verifier says: {verdict}")
        return verdict


def check_task2(label: str, my_check):
    """Task 2: ``label`` names the mystery's loophole (a key of FLAGS); ``my_check(solve)``
    returns True for a correct axpy ``solve`` and False for the mystery one."""
    with task("Task 2: name and catch the mystery cheat"):
        require(isinstance(label, str) and label in FLAGS,
                f"label must be one of the verifier's flags: {', '.join(FLAGS)}")
        require(label == "cached_result", f"{label!r} is not what the mystery candidate does: "
                "run it twice on different inputs of the same size and compare")
        require(callable(my_check), "my_check must be a function of solve")
        caught = my_check(load_solve(MYSTERY_SOURCE))
        require(caught is False, "my_check accepted the mystery candidate (it must return False)")
        accepted = my_check(load_solve(AXPY_SOURCE))
        require(accepted is True, "my_check rejected a correct axpy (it must return True)")


def check_task3(check, verifier: Verifier | None = None):
    """Task 3: ``check`` (a LoopholeCheck) must flag the x*(x>0) ReLU and pass a correct one."""
    with task("Task 3: a loophole check of your own"):
        require(isinstance(check, LoopholeCheck),
                "pass an instance of a LoopholeCheck subclass (e.g. SpecialValues())")
        require(isinstance(check.name, str) and check.name and check.name not in FLAGS,
                "give your check its own name (a class attribute `name`)")
        with _verifier(verifier, [check]) as v:
            good = v.verify("relu", RELU_SOURCE, kind="numba")
            sneaky = v.verify("relu", RELU_MASK_SOURCE, kind="numba")
        require(good.passed, f"your check rejects a correct ReLU: {good}")
        require(check.name in sneaky.flags,
                f"your check did not flag x * (x > 0) (verdict: {sneaky}); which inputs make it "
                "differ from torch.relu?")
        return sneaky
