"""Exercises: notebooks stored clean, exercises generated from solutions and fresh, stubs
that fail only where the learner must write code, and a learner's edits never overwritten
(by `make lab`'s set-up or by `gpulab exercises`)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from gpulab.course import exercises
from gpulab.course.registry import chapter
from gpulab_cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
ALL_NOTEBOOKS = sorted(p for folder in ("notebooks", "solutions", "exercises")
                       for p in (ROOT / folder).glob("*.ipynb") if exercises.BACKUP_TAG not in p.name)
EXERCISES = [p for p in ALL_NOTEBOOKS if p.parent.name == "exercises"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def test_every_solution_has_a_fresh_exercise():
    assert exercises.stale_exercises(ROOT, committed=True) == [], "run `gpulab exercises` and commit exercises/"


def test_cli_exercises_check_passes():
    assert cli_main(["exercises", "--check", "--root", str(ROOT)]) == 0


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_names_its_chapter_and_carries_its_fingerprint(path):
    info = nbformat.read(str(path), as_version=4).metadata["gpulab"]
    assert info["chapter"] == chapter(path.stem).number
    assert not exercises.edited_by_learner(path), f"{path.name}: its cells differ from its fingerprint"


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


def test_fingerprint_follows_sources_not_outputs():
    nb = exercises.make_exercise(_nb("x = 1", "#md text"), "00_start_here.ipynb")
    assert nb.metadata["gpulab"]["chapter"] == "00"
    ran = nbformat.from_dict(nb)
    ran.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    ran.cells[0].execution_count = 1
    assert exercises.fingerprint(ran) == nb.metadata["gpulab"]["fingerprint"]
    ran.cells[0].source = "x = 2"
    assert exercises.fingerprint(ran) != nb.metadata["gpulab"]["fingerprint"]
    assert "chapter" not in exercises.make_exercise(_nb("x = 1"), "scratch.ipynb").metadata["gpulab"]


def test_stale_exercise_is_detected(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "exercises").mkdir()
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), tmp_path / "solutions" / "a.ipynb")
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"]
    assert exercises.generate_all(tmp_path).written == [tmp_path / "exercises" / "a.ipynb"]
    assert exercises.stale_exercises(tmp_path) == []
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 2\n### END SOLUTION\nprint(x)"), tmp_path / "solutions" / "a.ipynb")
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"]
    nbformat.write(_nb("x = 3"), tmp_path / "exercises" / "orphan.ipynb")
    assert "orphan.ipynb (no solution)" in exercises.stale_exercises(tmp_path)
    (tmp_path / "exercises" / "orphan.ipynb").rename(tmp_path / "exercises" / "a.backup-20260101-000000.ipynb")
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"], "a learner's backup is not an orphan"


def test_a_learners_edits_of_the_current_version_are_fresh_and_kept(tmp_path):
    """A learner edits the exercise: `gpulab exercises --check` (and so `make test`) stays
    green and `gpulab exercises` (so `make lab`) neither replaces it nor says a newer
    version is ready, until the solution really changes."""
    (tmp_path / "solutions").mkdir()
    sol = tmp_path / "solutions" / "a.ipynb"
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"), sol)
    exercises.generate_all(tmp_path)
    ex = tmp_path / "exercises" / "a.ipynb"
    nb = nbformat.read(str(ex), as_version=4)
    nb.cells[0].source = "x = 1  # my answer"
    nbformat.write(nb, ex)
    assert exercises.stale_exercises(tmp_path) == []
    again = exercises.generate_all(tmp_path)
    assert (again.written, again.kept) == ([], []) and "my answer" in ex.read_text()
    nbformat.write(_nb("### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "print(x)"), sol)   # the course changes
    assert exercises.stale_exercises(tmp_path) == ["a.ipynb"]
    assert exercises.generate_all(tmp_path).kept == [ex] and "my answer" in ex.read_text()


# ------------------------------------------------- a learner's work is never lost

def _lab_setup_commands() -> list[str]:
    """What `make lab` runs before it starts Jupyter (read from the Makefile, so the test
    follows the real target)."""
    venv = Path(sys.executable).parent.parent
    out = subprocess.run(["make", "-n", "-s", "lab", f"VENV={venv}", "-o", f"{venv}/.installed-dev"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    setup = []
    for line in out.splitlines():
        if "jupyter" in line and " lab" in line:
            break
        setup.append(line)
    assert any("gpulab exercises" in line for line in setup), f"make lab no longer generates exercises:\n{out}"
    if not (venv / "bin" / "gpulab").exists():   # e.g. the GPU image: gpulab on PYTHONPATH, not installed
        pytest.skip(f"make lab needs the course installed in a venv ({venv}/bin/gpulab is missing)")
    return [line for line in setup if "gpulab exercises" in line]


def _copy_course(tmp_path: Path, stems: list[str]) -> Path:
    course = tmp_path / "course"
    for folder in ("solutions", "exercises", "gpulab"):
        (course / folder).mkdir(parents=True)
    for stem in stems:
        for folder in ("solutions", "exercises"):
            shutil.copy(ROOT / folder / f"{stem}.ipynb", course / folder)
    return course


def _change_solution(path: Path):
    """A course update: the solution gets a new markdown cell, so its exercise is stale."""
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new remark from the instructor."))
    nbformat.write(nb, str(path))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_setup_keeps_a_learners_edit_and_force_backs_it_up(tmp_path):
    course = _copy_course(tmp_path, ["00_start_here", "03_kernel_fusion"])
    edited = course / "exercises" / "00_start_here.ipynb"
    pristine = course / "exercises" / "03_kernel_fusion.ipynb"
    nb = nbformat.read(str(edited), as_version=4)
    stub = next(c for c in nb.cells if c.metadata.get("gpulab", {}).get("stub"))
    stub.source = stub.source.replace("raise NotImplementedError", "my_answer = 42  # mine\n    # raise")
    nb.nbformat_minor = 5                      # saved by JupyterLab: cell ids appear
    for cell in nb.cells:
        cell["id"] = os.urandom(4).hex()
    nbformat.write(nb, str(edited))
    my_text = edited.read_text()
    for stem in ("00_start_here", "03_kernel_fusion"):
        _change_solution(course / "solutions" / f"{stem}.ipynb")

    env = dict(os.environ, GPULAB_MODE="sim", GPULAB_QUIET="1")
    for command in _lab_setup_commands():
        done = subprocess.run(command, shell=True, cwd=course, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert edited.read_text() == my_text, "make lab replaced the learner's edited exercise"
    assert "not replaced: exercises/00_start_here.ipynb" in done.stderr
    assert "A new remark" in pristine.read_text(), "an unedited stale exercise should be updated"
    assert cli_main(["exercises", "--check", "--root", str(course)]) == 1, "the kept exercise is stale"

    assert cli_main(["exercises", "--force", "--root", str(course)]) == 0
    backups = list((course / "exercises").glob("00_start_here.backup-*.ipynb"))
    assert len(backups) == 1 and backups[0].read_text() == my_text
    assert "my_answer = 42" not in edited.read_text() and "A new remark" in edited.read_text()
    assert cli_main(["exercises", "--check", "--root", str(course)]) == 0


def test_a_run_but_unedited_exercise_keeps_its_outputs(tmp_path):
    course = _copy_course(tmp_path, ["00_start_here"])
    path = course / "exercises" / "00_start_here.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="the learner ran this")]
    nbformat.write(nb, str(path))
    ran = path.read_text()
    result = exercises.generate_all(course)
    assert (result.written, result.kept) == ([], []) and path.read_text() == ran


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
