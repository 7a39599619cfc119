"""Every graded task of every chapter rejects each of its planted wrong answers, with
feedback that names the mistake, and accepts the real solution (taken from the chapter's
solution notebook, not from the checks module). Prints a mutation score per task."""
from __future__ import annotations

import nbformat
import pytest

import gpulab
from gpulab.course.checks.engine import all_tasks
from gpulab.course.feedback import TaskFailed
from gpulab.course.registry import chapter, course_root

TASKS = all_tasks()
MIN_PLANTED = 5


def _task_id(task):
    return f"ch{task.chapter}-task{task.number}"


@pytest.mark.parametrize("task", TASKS, ids=_task_id)
def test_every_planted_wrong_answer_is_rejected_with_its_mistake_named(task, capsys):
    assert len(task.planted) >= MIN_PLANTED, f"{_task_id(task)} declares {len(task.planted)} planted answers"
    runnable = [p for p in task.planted if gpulab.SIMULATOR or not p.simulator_only]
    accepted, unnamed = [], []
    for planted in runnable:
        try:
            task.run(planted.answer)
        except TaskFailed as exc:
            if planted.expect.lower() not in str(exc).lower():
                unnamed.append(f"{planted.name!r}: expected {planted.expect!r} in: {exc}")
        else:
            accepted.append(planted.name)
    rejected = len(runnable) - len(accepted)
    with capsys.disabled():
        print(f"\n  mutation score {_task_id(task)} ({task.title}): {rejected}/{len(runnable)} rejected"
              + (f", {len(unnamed)} without the mistake named" if unnamed else ""))
    assert not accepted, f"planted wrong answers accepted: {accepted}"
    assert not unnamed, "feedback did not name the mistake:\n" + "\n".join(unnamed)


def _solution_namespace(number: str) -> dict:
    """Run the solution notebook's set-up cell and its solution cells (not the check cells)."""
    nb = nbformat.read(course_root() / chapter(number).solution, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    namespace: dict = {}
    for i, cell in enumerate(code):
        grading = cell.metadata.get("nbgrader", {})
        if i == 0 or (grading.get("solution") and not grading.get("grade")):
            exec(compile(cell.source, f"{chapter(number).solution}[{i}]", "exec"), namespace)
    return namespace


_NAMESPACES: dict = {}


@pytest.mark.parametrize("task", TASKS, ids=_task_id)
def test_the_solution_passes(task):
    assert task.solution, f"{_task_id(task)} names no solution object"
    if task.chapter not in _NAMESPACES:
        _NAMESPACES[task.chapter] = _solution_namespace(task.chapter)
    namespace = _NAMESPACES[task.chapter]
    assert task.solution in namespace, f"the solution notebook defines no {task.solution!r}"
    task.run(namespace[task.solution])
