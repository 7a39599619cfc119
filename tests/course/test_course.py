"""Course tooling: notebooks stored clean, exercises generated and fresh, exercises that
fail only where the learner must write code, and the grader's scoring."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from gpulab.course import exercises
from gpulab_cli import main as cli_main
from gpulab.course.grading import grade_notebook

ROOT = Path(__file__).resolve().parents[2]
ALL_NOTEBOOKS = sorted(p for folder in ("notebooks", "solutions", "exercises")
                       for p in (ROOT / folder).glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def test_every_solution_has_a_fresh_exercise():
    assert exercises.stale_exercises(ROOT) == [], "run `gpulab exercises` and commit exercises/"


def test_cli_exercises_check_passes():
    assert cli_main(["exercises", "--check", "--root", str(ROOT)]) == 0


# ------------------------------------------------------------------ the generator

def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) if not c.startswith("#md ") else
                nbformat.v4.new_markdown_cell(c[4:]) for c in cells]
    return nb


def test_solution_blocks_become_indented_stubs_with_hints():
    nb = _nb("def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: double it\n    return 2 * x\n    ### END SOLUTION\n",
             "y = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\nprint(y)")
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="secret answer")]
    nb.cells[0].execution_count = 3
    ex = exercises.make_exercise(nb)
    assert ex.cells[0].source == ("def f(x):\n    # YOUR CODE HERE\n"
                                  "    raise NotImplementedError('double it')")
    assert "y = 2" not in ex.cells[1].source and "print(y)" in ex.cells[1].source
    assert ex.cells[0].outputs == [] and ex.cells[0].execution_count is None
    assert ex.cells[0].metadata["gpulab"]["stub"] is True
    assert "return 2 * x" in nb.cells[0].source  # the solution itself is untouched


def test_hidden_tests_are_removed():
    nb = _nb("check(a)\n### BEGIN HIDDEN TESTS\ncheck(a, hidden=True)\n### END HIDDEN TESTS\ndone()")
    assert exercises.make_exercise(nb).cells[0].source == "check(a)\ndone()"


@pytest.mark.parametrize("source, match", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without its BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n", "inside an open"),
])
def test_unbalanced_markers_are_reported(source, match):
    with pytest.raises(exercises.MarkerError, match=match):
        exercises.make_exercise(_nb(source), "broken.ipynb")


def test_stale_exercise_is_detected(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "exercises").mkdir()
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), tmp_path / "solutions" / "a.ipynb")
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"]
    assert exercises.generate_all(tmp_path) == [tmp_path / "exercises" / "a.ipynb"]
    assert exercises.stale_exercises(tmp_path) == []
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 2\n### END SOLUTION\nprint(x)"), tmp_path / "solutions" / "a.ipynb")
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"]
    nbformat.write(_nb("x = 3"), tmp_path / "exercises" / "orphan.ipynb")
    assert "orphan.ipynb (no solution)" in exercises.stale_exercises(tmp_path)


# ------------------------------------------------- exercises fail only at the stubs

def _not_done(text: str) -> bool:
    return "NotImplementedError" in text or "not done yet" in text


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_runs_and_fails_only_where_code_is_missing(path):
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=300, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    stub_seen = False
    graded_results = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        text = " ".join(f"{o.ename}: {o.evalue}" for o in errors)
        is_stub = cell.metadata.get("gpulab", {}).get("stub", False)
        stub_seen = stub_seen or is_stub
        grade = cell.metadata.get("nbgrader", {})
        if grade.get("grade"):
            graded_results[grade["grade_id"]] = text
            continue
        if errors:
            allowed = _not_done(text) or (stub_seen and errors[0].ename == "NameError")
            assert allowed, f"{path.name} cell {i} failed for another reason than a stub: {text}"
    assert graded_results, f"{path.name} has no graded cells"
    for gid, text in graded_results.items():
        assert _not_done(text) or "NameError" in text, \
            f"{path.name}: graded cell {gid} should fail as not done, got: {text or 'no error'}"


# ------------------------------------------------------------------------ grading

def _graded(source, gid, points=1):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": gid, "points": points, "locked": True,
                                 "solution": False, "schema_version": 3}
    return cell


def _notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = cells
    return nb


def test_grader_survives_hang_crash_and_peeking(tmp_path):
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    peek = str(course / "solutions" / "a.ipynb")
    nb = _notebook([
        nbformat.v4.new_code_cell("x = 41"),
        _graded("assert x + 1 == 42", "passes", 2),
        _graded("assert x == 0, 'x should be 0'", "fails", 1),
        _graded("while True:\n    pass", "hangs", 1),
        nbformat.v4.new_code_cell("y = x + 1"),
        _graded("import os\nos._exit(3)", "crashes", 1),
        _graded("assert y == 42", "after_crash", 3),
        _graded(f"open({peek!r}).read()", "peeks", 1),
        _graded(f"import subprocess\nsubprocess.run(['cat', {peek!r}], check=True)", "shell_peeks", 1),
    ])
    sub = tmp_path / "a.ipynb"
    nbformat.write(nb, sub)
    nbformat.write(nb, peek)  # the instructor's copy, which the submission tries to read
    report = grade_notebook(sub, cell_timeout=15, course_root=course)
    results = {t.grade_id: t for t in report.tasks}
    assert {k: v.passed for k, v in results.items()} == {
        "passes": True, "fails": False, "hangs": False, "crashes": False, "after_crash": True, "peeks": False,
        "shell_peeks": False}
    assert "x should be 0" in results["fails"].feedback
    assert "did not finish within 15 s" in results["hangs"].feedback
    assert "kernel died" in results["crashes"].feedback
    assert "not allowed while grading" in results["peeks"].feedback
    assert "starting other programs is not allowed" in results["shell_peeks"].feedback
    assert (report.score, report.max_score) == (5, 10)
    assert "score: 5/10" in report.text()


def test_grader_restarts_the_kernel_after_a_cuda_error(tmp_path):
    # After an illegal memory access every later CUDA call in that process fails too; the
    # grader must give the next task a fresh kernel (here "broken" stands in for the
    # poisoned CUDA context, and only a restart clears it).
    nb = _notebook([
        nbformat.v4.new_code_cell("broken = False"),
        _graded("broken = True\nraise RuntimeError('CUDA error: an illegal memory access was encountered')",
                "faults", 1),
        _graded("assert not broken, 'the CUDA context is still broken'", "after_fault", 1),
    ])
    sub = tmp_path / "b.ipynb"
    nbformat.write(nb, sub)
    report = grade_notebook(sub, cell_timeout=30, course_root=tmp_path)
    results = {t.grade_id: t for t in report.tasks}
    assert not results["faults"].passed and "illegal memory access" in results["faults"].feedback
    assert results["after_fault"].passed, results["after_fault"].feedback


def test_grader_restores_check_cells_from_the_solution(tmp_path):
    solution = _notebook([nbformat.v4.new_code_cell("answer = 2"), _graded("assert answer == 3", "t1")])
    weakened = _notebook([nbformat.v4.new_code_cell("answer = 2"), _graded("pass  # check removed", "t1")])
    nbformat.write(solution, tmp_path / "sol.ipynb")
    nbformat.write(weakened, tmp_path / "sub.ipynb")
    report = grade_notebook(tmp_path / "sub.ipynb", solution=tmp_path / "sol.ipynb", cell_timeout=30,
                            course_root=tmp_path)
    assert [t.passed for t in report.tasks] == [False]


def test_grading_a_wrong_assignment_00_gives_partial_score(tmp_path):
    nb = nbformat.read(str(ROOT / "exercises" / "00_start_here.ipynb"), as_version=4)
    sol = nbformat.read(str(ROOT / "solutions" / "00_start_here.ipynb"), as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in sol.cells}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "task1_solution":       # right
            cell.source = by_id[gid].source.replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", "")
        elif gid == "task2_solution":     # reads past the end of x
            cell.source = by_id[gid].source.replace("x[i] if i < x.size else float32(0.0)", "x[i]")
        # task 3 stays a stub
    # and the submission tries to switch off task 3's check in two ways: rebinding the
    # module's function and shadowing the name (the grader undoes both)
    cheat = nbformat.v4.new_code_cell("checks.check_vector_sum = lambda *a, **k: None\n"
                                      "def check_vector_sum(*a, **k):\n    return None")
    first_check = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    nb.cells.insert(first_check, cheat)
    sub = tmp_path / "00_start_here.ipynb"
    nbformat.write(nb, sub)
    report = grade_notebook(sub, cell_timeout=240)
    results = {t.grade_id: t for t in report.tasks}
    assert results["task1_brighten"].passed
    assert not results["task2_block_sums"].passed and "Task 2" in results["task2_block_sums"].feedback
    assert not results["task3_vector_sum"].passed and "not done yet" in results["task3_vector_sum"].feedback
    assert (report.score, report.max_score) == (2, 7)
