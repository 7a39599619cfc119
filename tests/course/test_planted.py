"""The planted-answer contract, walked over the registry: every ready chapter declares
graded tasks on the checks engine, each with at least MIN_PLANTED planted wrong answers, and
its tests folder runs them (tests/chNN_slug/test_chNN_planted.py, which the chapter's
time budget counts). Run them all with `pytest tests -k planted`."""
from __future__ import annotations

import ast

import nbformat
import pytest

import gpulab
from gpulab.course.checks.engine import all_tasks
from gpulab.course.registry import CHAPTERS, course_root
from helpers import MIN_PLANTED, assert_planted_rejected, task_id

BUILT = [ch for ch in CHAPTERS if ch.built]


def _names_defined_in(notebook) -> set[str]:
    """Functions, classes and variables the notebook's plain-Python code cells define."""
    names = set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("ch", BUILT, ids=lambda ch: ch.stem)
def test_each_built_chapter_runs_its_planted_answers(ch):
    tasks = [t for t in all_tasks() if t.chapter == ch.number]
    assert tasks, f"chapter {ch.number} declares no graded task in {ch.checks_module}"
    for task in tasks:
        assert len(task.planted) >= MIN_PLANTED, f"{task_id(task)} declares only {len(task.planted)} planted answers"
    defined = _names_defined_in(course_root() / ch.solution)
    for task in tasks:
        assert task.solution in defined, (f"{task_id(task)} names its solution {task.solution!r}, "
                                          f"which {ch.solution} does not define")
    runner = course_root() / ch.tests / f"test_ch{ch.number}_planted.py"
    assert runner.exists(), f"{runner.relative_to(course_root())} is missing: it runs the planted answers"
    assert f'chapter_planted_tests("{ch.number}")' in runner.read_text(), f"{runner.name} runs another chapter's tasks"


@pytest.mark.skipif(not gpulab.SIMULATOR, reason="on a GPU the chapters' own planted tests run this way")
@pytest.mark.parametrize("task", all_tasks(), ids=task_id)
def test_planted_answers_are_named_without_the_simulators_recorder(task, capsys):
    """CI has no GPU: the answers a GPU runs are run here with the race recorder off, as
    on a GPU, so feedback that only the recorder's findings could give is caught here."""
    score = assert_planted_rejected(task, as_on_a_gpu=True)
    with capsys.disabled():
        print(f"\n  {score}")
