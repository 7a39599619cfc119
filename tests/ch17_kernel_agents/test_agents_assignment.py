"""Chapter 17 assignment checks: the right answers pass, plausible wrong answers fail."""
import pytest
import torch

import gpulab

from gpulab.course.feedback import TaskFailed
from gpulab.kernelagent import LoopholeCheck, Verifier
from gpulab.kernelagent.assignment import (AXPY_SOURCE, check_task1, check_task2, check_task3,
                                           load_solve)

RMSNORM = '''import math
import numba
from numba import cuda
import gpulab

EPS = numba.float32(1e-6)


@gpulab.kernel
def rmsnorm_rows(x, weight, out):
    r = cuda.grid(1)
    if r < x.shape[0]:
        n = x.shape[1]
        total = numba.float32(0.0)
        for j in range(n):
            total += x[r, j] * x[r, j]
        inv = numba.float32(1.0) / math.sqrt(total / numba.float32(DIVISOR) + EPS)
        for j in range(n):
            out[r, j] = x[r, j] * inv WEIGHT


def solve(x, weight, out):
    rmsnorm_rows[math.ceil(x.shape[0] / 32), 32](x, weight, out)
'''


def rmsnorm(divisor="n", weight=" * weight[j]"):
    return RMSNORM.replace("DIVISOR", divisor).replace(" WEIGHT", weight)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(seed=31) as v:
        yield v


def test_task1_accepts_a_correct_rmsnorm(verifier, tmp_path):
    path = tmp_path / "rmsnorm.py"
    path.write_text(rmsnorm())
    assert check_task1(str(path), verifier).passed


@pytest.mark.parametrize("source, why", [
    (rmsnorm(divisor="(n - 1)"), "wrong"),
    (rmsnorm(weight=""), "ignores_input"),
    (RMSNORM.replace("DIVISOR", "n").replace(" WEIGHT", " * weight[j]").replace(
        "rmsnorm_rows[math.ceil(x.shape[0] / 32), 32](x, weight, out)",
        "out.copy_(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight)").replace(
        "import gpulab", "import gpulab\nimport torch"), "calls_torch_op"),
    ("import torch\n\ndef solve(x, weight, out):\n    out.copy_(x)\n", "gpulab.kernel"),
    ("def solve(x, weight, out):\n    # YOUR CODE HERE\n    raise NotImplementedError('write it')\n", "not done yet"),
])
def test_task1_rejects_wrong_answers(verifier, source, why):
    with pytest.raises(TaskFailed, match=why):
        check_task1(source, verifier)


def test_task1_reports_an_unfinished_stub_as_not_done(verifier):
    stub = "import gpulab\n# YOUR CODE HERE\nraise NotImplementedError('write the kernel')\n\ndef solve(x, weight, out):\n    pass\n"
    with pytest.raises(TaskFailed, match="not done yet"):
        check_task1(stub, verifier)


def _catches_cache(solve):
    x1, y1 = gpulab.randn(50), gpulab.randn(50)
    x2, y2 = gpulab.randn(50), gpulab.randn(50)
    for x, y in ((x1, y1), (x2, y2)):
        out = torch.full((50,), float("nan"), device=gpulab.device)
        solve(x, y, out=out)
        if not torch.allclose(out, 2.5 * x + y):
            return False
    return True


def _calls_once(solve):
    """The naive check: one call, one comparison. The mystery cheat passes it."""
    x, y = gpulab.randn(50), gpulab.randn(50)
    out = gpulab.empty(50)
    solve(x, y, out=out)
    return bool(torch.allclose(out, 2.5 * x + y))


def test_task2_accepts_the_right_label_and_check():
    check_task2("cached_result", _catches_cache)


@pytest.mark.parametrize("label, my_check, why", [
    ("shape_dependent", _catches_cache, "not what the mystery"),
    ("cache", _catches_cache, "one of the verifier's flags"),
    ("cached_result", lambda solve: True, "accepted the mystery"),
    ("cached_result", lambda solve: False, "rejected a correct axpy"),
    ("cached_result", _calls_once, "accepted the mystery"),
])
def test_task2_rejects_wrong_answers(label, my_check, why):
    with pytest.raises(TaskFailed, match=why):
        check_task2(label, my_check)


def test_load_solve_gives_fresh_state_each_time():
    a, b = load_solve(AXPY_SOURCE), load_solve(AXPY_SOURCE)
    assert a is not b


class SpecialValues(LoopholeCheck):
    name = "special_values"

    def extra_inputs(self, task, shape, generator):
        x = torch.randn(*shape, generator=generator)
        x[::3] = float("-inf")
        x[1::3] = float("inf")
        return [(x,)]


class NoInputs(LoopholeCheck):
    name = "no_inputs"


class Paranoid(LoopholeCheck):
    name = "paranoid"

    def extra_inputs(self, task, shape, generator):
        return [task.inputs(shape, 0)]

    def judge(self, task, results):
        return "everything is suspicious"


class Finite(LoopholeCheck):
    name = "finite_only"

    def extra_inputs(self, task, shape, generator):
        return [(torch.randn(*shape, generator=generator) * 1e30,)]


def test_task3_accepts_a_special_values_check(verifier):
    verdict = check_task3(SpecialValues(), verifier)
    assert "special_values" in verdict.flags
    assert verifier.extra_checks == []      # the shared verifier is left as it was


@pytest.mark.parametrize("check, why", [
    (NoInputs(), "did not flag"),
    (Finite(), "did not flag"),
    (Paranoid(), "rejects a correct ReLU"),
    (SpecialValues, "instance"),
])
def test_task3_rejects_wrong_checks(verifier, check, why):
    with pytest.raises(TaskFailed, match=why):
        check_task3(check, verifier)


def test_task3_requires_an_own_name(verifier):
    class Renamed(SpecialValues):
        name = "cached_result"
    with pytest.raises(TaskFailed, match="own name"):
        check_task3(Renamed(), verifier)
