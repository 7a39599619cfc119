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
