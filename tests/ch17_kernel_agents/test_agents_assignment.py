"""Chapter 17 assignment checks (gpulab.course.checks.ch17_kernel_agents): the right answers
pass, wrong answers fail with feedback that names the mistake. The planted wrong answers of
every task run in tests/course/test_planted.py; here: the notebook-facing API, the shared
verifier left as it was, the hidden cases, and what the old module already rejected."""
import pytest
import torch

import gpulab
from gpulab.course.checks import ch17_kernel_agents as checks
from gpulab.course.feedback import TaskFailed
from gpulab.kernelagent import LoopholeCheck, Verifier

RIGHT_RMSNORM = checks._RMSNORM


@pytest.fixture(scope="module")
def verifier():
    with Verifier(seed=31) as v:
        yield v


STUB = ("import gpulab\n# YOUR CODE HERE\nraise NotImplementedError('write the kernel')\n\n"
        "def solve(x, weight, out):\n    pass\n")


def test_task1_accepts_a_correct_rmsnorm_and_reads_a_file(verifier, tmp_path):
    assert checks.check_task1(RIGHT_RMSNORM, verifier).passed
    # a file is read as its text: the stub in a file is the stub (cheaper to check than a
    # second full pass of the right answer, which the chapter's time budget cannot afford)
    path = tmp_path / "rmsnorm.py"
    path.write_text(STUB)
    with pytest.raises(TaskFailed, match="not done yet"):
        checks.check_task1(str(path), verifier)


def test_task1_reports_an_unfinished_stub_as_not_done(verifier):
    with pytest.raises(TaskFailed, match="not done yet"):
        checks.check_task1(STUB, verifier)


def test_task1_names_the_eps_mistake_on_rows_where_eps_matters(verifier):
    eps_outside = checks.RMSNORM_VERIFIED.planted[0].answer
    assert "+ EPS)" in eps_outside
    with pytest.raises(TaskFailed, match="inside the square root"):
        checks.check_task1(eps_outside, verifier)


def test_task1_inputs_probe_eps_and_a_zero_row():
    x, weight = checks.rmsnorm_inputs((7, 4), torch.Generator().manual_seed(0))
    mean_square = x.pow(2).mean(-1)
    assert float(mean_square[1]) < 0.1 * checks.RMSNORM_EPS   # eps dominates this row
    assert torch.count_nonzero(x[2]) == 0
    assert float(mean_square[0]) > 1e3 * checks.RMSNORM_EPS    # an ordinary row


def test_task1_has_a_case_larger_than_a_fixed_grid():
    # the learner's own run already beats a fixed grid of 8 blocks of 32 (or one of 256)
    assert max(rows for rows, _ in checks.RMSNORM_VERIFIED.sizes.sim) > 256


def test_task1_rejects_a_path_that_is_not_source(verifier):
    with pytest.raises(TaskFailed, match="define solve"):
        checks.check_task1("no_such_file.py", verifier)


def _my_check(solve):
    for seed in (1, 2):
        x, y = checks._random_pair(60, seed, gpulab.device)
        out = torch.full((60,), float("nan"), device=x.device)
        solve(x, y, out=out)
        if not torch.allclose(out, 2.5 * x + y):
            return "cached_result"
    return None


def test_task2_accepts_a_check_that_names_the_cache():
    checks.check_task2(_my_check)


def test_task2_refuses_what_is_not_a_function():
    with pytest.raises(TaskFailed, match="pass a callable"):
        checks.check_task2("cached_result")


def test_task2_candidates_include_a_hidden_cache_and_a_harmless_seen():
    closure_cheat = checks.load_solve(checks.CLOSURE_CACHE_SOURCE)
    assert "_seen" not in closure_cheat.__globals__   # the cache is in the closure
    assert "_seen" in checks.load_solve(checks.AXPY_LOGGING_SOURCE).__globals__
    assert _my_check(closure_cheat) == "cached_result"
    assert _my_check(checks.load_solve(checks.AXPY_LOGGING_SOURCE)) is None


def test_asking_order_defeats_a_check_that_counts_its_calls():
    import random

    names, to_flag = ["good 1", "bad 1", "good 2", "bad 2"], {"bad 1", "bad 2"}
    orders = set()
    for seed in range(40):
        order = checks.asking_order(names, to_flag, random.Random(seed))
        assert sorted(set(order)) == sorted(names) and len(order) == len(names) + 2
        flagged_at = [k for k, name in enumerate(order) if name in to_flag]
        correct_at = [k for k, name in enumerate(order) if name not in to_flag]
        assert len(flagged_at) >= 3                       # no single call number catches them all
        assert max(correct_at) > min(flagged_at)          # "flag from the k-th call on" fails
        assert max(flagged_at) > min(correct_at)          # "flag up to the k-th call" fails
        orders.add(tuple(order))
    assert len(orders) > 10                               # and the order changes from run to run


def test_task2_sizes_come_in_a_new_order_each_run():
    sizes = checks.CATCH_THE_CHEAT.sizes
    runs = {tuple(sizes.for_run(False)) for _ in range(20)}
    assert len(runs) > 1 and all(set(run) == set(checks._TASK2_CANDIDATES) for run in runs)


def test_load_solve_gives_fresh_state_each_time():
    a, b = checks.load_solve(checks.AXPY_SOURCE), checks.load_solve(checks.AXPY_SOURCE)
    assert a is not b


class SpecialValues(LoopholeCheck):
    name = "special_values"

    def extra_inputs(self, task, shape, generator):
        x = torch.randn(*shape, generator=generator)
        x[::3] = float("-inf")
        x[1::3] = float("inf")
        return [(x,)]


class MinusInfOnly(LoopholeCheck):
    """Only -inf: enough for both sneaky ReLUs (each gives NaN there, relu gives 0)."""
    name = "minus_inf"

    def extra_inputs(self, task, shape, generator):
        return [(torch.full(shape, float("-inf")),)]


def test_task3_accepts_a_special_values_check_and_leaves_the_verifier_as_it_was(verifier):
    verdict = checks.check_task3(SpecialValues(), verifier, hidden=True)
    assert "special_values" in verdict.flags
    assert verifier.extra_checks == []


def test_task3_hidden_case_is_the_second_sneaky_relu(verifier):
    assert checks.OWN_LOOPHOLE_CHECK.sizes.hidden == ["the ReLU (x + |x|) / 2"]
    checks.check_task3(MinusInfOnly(), verifier, hidden=True)   # -inf catches both


def test_every_task_is_declared_on_the_engine():
    from gpulab.course.checks.engine import tasks_of

    assert [t.number for t in tasks_of("17")] == [1, 2, 3]
    assert all(len(t.planted) >= 5 for t in tasks_of("17"))
