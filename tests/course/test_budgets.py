"""The time budgets of tests/budgets.py fail a run that goes over them."""
from types import SimpleNamespace

import budgets


def _report(nodeid, seconds, when="call"):
    return SimpleNamespace(nodeid=nodeid, duration=seconds, when=when)


def test_a_slow_notebook_and_a_slow_chapter_are_over_budget():
    b = budgets.Budgets(on_gpu=False)
    b.pytest_runtest_logreport(_report("notebooks/06_gaussian_splatting.ipynb::Cell 3", 45.0))
    b.pytest_runtest_logreport(_report("notebooks/06_gaussian_splatting.ipynb::Cell 4", 20.0))
    b.pytest_runtest_logreport(_report("tests/ch06_gaussian_splatting/test_splat.py::test_a", 30.0))
    b.pytest_runtest_logreport(_report("tests/ch06_gaussian_splatting/test_splat.py::test_a", 11.0, "setup"))
    problems = b.over_budget()
    assert any("notebooks/06_gaussian_splatting.ipynb: 65 s" in p for p in problems), problems
    assert any("tests/ch06_gaussian_splatting/: 41 s" in p for p in problems), problems


def test_within_budget_nothing_is_reported():
    b = budgets.Budgets(on_gpu=False)
    b.pytest_runtest_logreport(_report("notebooks/00_start_here.ipynb::Cell 1", 59.0))
    b.pytest_runtest_logreport(_report("tests/ch00_start_here/test_basics.py::test_x", 39.0))
    b.pytest_runtest_logreport(_report("tests/core/test_launch.py::test_y", 300.0))  # core: no chapter budget
    assert b.over_budget() == []


def test_on_a_gpu_notebooks_get_two_minutes():
    b = budgets.Budgets(on_gpu=True)
    b.pytest_runtest_logreport(_report("solutions/17_kernel_agents.ipynb::Cell 2", 100.0))
    assert b.over_budget() == []
    b.pytest_runtest_logreport(_report("solutions/17_kernel_agents.ipynb::Cell 3", 30.0))
    assert b.over_budget() == ["notebook solutions/17_kernel_agents.ipynb: 130 s (budget 120 s)"]


def test_the_test_log_names_failures_as_they_happen(tmp_path):
    log = budgets.TestLog(str(tmp_path / "log.txt"))
    log.pytest_runtest_logreport(SimpleNamespace(nodeid="tests/core/test_a.py::test_ok", duration=1.0,
                                                 when="call", outcome="passed", failed=False))
    log.pytest_runtest_logreport(SimpleNamespace(nodeid="tests/core/test_a.py::test_ok", duration=0.1,
                                                 when="setup", outcome="passed", failed=False))
    log.pytest_runtest_logreport(SimpleNamespace(nodeid="tests/core/test_a.py::test_bad", duration=2.0,
                                                 when="call", outcome="failed", failed=True,
                                                 longrepr="AssertionError: 1 != 2"))
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert lines[0].split() == ["passed", "call", "1.0", "s", "tests/core/test_a.py::test_ok"]
    assert lines[1].split()[:2] == ["failed", "call"] and lines[1].endswith("test_bad")
    assert "AssertionError: 1 != 2" in lines[2]
    assert len(lines) == 3  # the passed setup phase is not logged


def test_planted_answers_have_their_own_budget():
    b = budgets.Budgets(on_gpu=False)
    b.pytest_runtest_logreport(_report("tests/ch06_gaussian_splatting/test_splat.py::test_a", 35.0))
    b.pytest_runtest_logreport(_report("tests/ch06_gaussian_splatting/test_ch06_planted.py::test_p", 25.0))
    assert b.over_budget() == []
    b.pytest_runtest_logreport(_report("tests/ch06_gaussian_splatting/test_ch06_planted.py::test_q", 6.0))
    assert b.over_budget() == ["tests/ch06_gaussian_splatting/ planted answers: 31 s (budget 30 s)"]
