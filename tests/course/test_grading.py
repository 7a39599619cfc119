"""The grader: a score per task whatever the submission does (hangs, crashes, peeks at the
solution, breaks CUDA), graded against its chapter's solution whatever its file name, and
a folder of submissions into one gradebook."""
import csv
import json
from pathlib import Path

import nbformat
import pytest

from gpulab.course import grading
from gpulab.course.grading import grade_notebook, identify_chapter
from gpulab_cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


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


def _read(folder, stem):
    return nbformat.read(str(ROOT / folder / f"{stem}.ipynb"), as_version=4)


# ----------------------------------------------- whatever the submission does

LONG_REASON = "x should be 0 " + "because the task says so " * 30


def test_grader_survives_hang_crash_and_peeking(tmp_path, capsys):
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    peek = str(course / "solutions" / "a.ipynb")
    nb = _notebook([
        nbformat.v4.new_code_cell("x = 41"),
        _graded("assert x + 1 == 42", "passes", 2),
        _graded(f"assert x == 0, {LONG_REASON!r}", "fails", 1),
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
    report = grade_notebook(sub, cell_timeout=10, course_root=course, use_submission_checks=True)
    results = {t.grade_id: t for t in report.tasks}
    assert {k: v.passed for k, v in results.items()} == {
        "passes": True, "fails": False, "hangs": False, "crashes": False, "after_crash": True, "peeks": False,
        "shell_peeks": False}
    assert LONG_REASON.strip() in results["fails"].feedback, "feedback must be given in full"
    assert LONG_REASON.strip() in json.loads(report.to_json())["tasks"][1]["feedback"]
    assert "did not finish within 10 s" in results["hangs"].feedback
    assert "kernel died" in results["crashes"].feedback
    assert "not allowed while grading" in results["peeks"].feedback
    assert "starting other programs is not allowed" in results["shell_peeks"].feedback
    assert (report.score, report.max_score) == (5, 10)
    # its own checks (no solution exists): said loudly, in the report and the JSON
    assert report.own_checks and grading.OWN_CHECKS_WARNING in report.text()
    assert json.loads(report.to_json())["own_checks"] is True
    text = report.text()
    assert "score: 5/10" in text
    assert " ".join(LONG_REASON.split()) in " ".join(text.split()), "the text report wraps, never cuts"


@pytest.mark.parametrize("guard", ["raise RuntimeError('no guard today')", "import time; time.sleep(30)"],
                         ids=["guard-fails", "guard-too-slow"])
def test_nothing_runs_when_the_guard_is_not_installed(tmp_path, monkeypatch, guard):
    # On a loaded GPU machine the guard cell once ran past the cell limit and the grader went
    # on without it, so a cell that read the solution passed. Now no submitted cell runs.
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    ran = tmp_path / "ran"
    monkeypatch.setattr(grading, "_GUARD", guard + "\n# {blocked} {checks}\n")
    monkeypatch.setattr(grading, "GUARD_TIMEOUT_S", 3.0)
    nb = _notebook([nbformat.v4.new_code_cell(f"open({str(ran)!r}, 'w').write('x')"),
                    _graded("assert True", "trivial", 2)])
    sub = tmp_path / "a.ipynb"
    nbformat.write(nb, sub)
    report = grade_notebook(sub, cell_timeout=2, course_root=course, use_submission_checks=True)
    assert (report.score, report.max_score) == (0, 2)
    assert "could not install its guard" in report.error
    assert not ran.exists(), "a submitted cell ran without the guard"


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
    report = grade_notebook(sub, cell_timeout=30, course_root=tmp_path, use_submission_checks=True)
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
    assert not report.own_checks


# ------------------------------------------------------ which chapter (no kernels)

def test_chapter_from_metadata_then_content_whatever_the_name():
    exercise = _read("exercises", "06_gaussian_splatting")
    ch, how = identify_chapter(exercise, ROOT)
    assert ch.number == "06" and "metadata" in how
    exercise.metadata.pop("gpulab")
    ch, how = identify_chapter(exercise, ROOT)
    assert ch.number == "06" and "content" in how
    exercise.metadata["gpulab"] = {"chapter": "99"}       # a wrong claim: content decides
    ch, how = identify_chapter(exercise, ROOT)
    assert ch.number == "06" and "'99'" in how
    assert identify_chapter(exercise, ROOT, key="11")[0].number == "11"
    with pytest.raises(ValueError, match="no chapter '42'"):
        identify_chapter(exercise, ROOT, key="42")
    lecture = _read("notebooks", "06_gaussian_splatting")
    assert identify_chapter(lecture, ROOT)[0] is None


def test_unknown_chapter_scores_zero_without_running(tmp_path, capsys):
    sub = tmp_path / "mystery.ipynb"
    nbformat.write(_notebook([_graded("print('looks fine')", "t1", 4)]), sub)
    report = grade_notebook(sub, course_root=ROOT)
    assert (report.score, report.max_score) == (0, 4) and "could not tell which chapter" in report.error
    assert cli_main(["grade", str(sub)]) == 2
    err = capsys.readouterr().err
    assert "could not tell which chapter" in err and "--chapter" in err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["grade", str(tmp_path / "nope.ipynb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gpulab grade: no notebook at {tmp_path / 'nope.ipynb'}"
    (tmp_path / "bad.ipynb").write_text("{not json")
    assert cli_main(["grade", str(tmp_path / "bad.ipynb")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a readable notebook" in err and "\n" not in err and "Traceback" not in err
    assert cli_main(["grade", str(tmp_path / "bad.ipynb"), "--fail-under", "70"]) == 2
    assert "0 to 1" in capsys.readouterr().err
    assert cli_main(["grade", str(tmp_path / "bad.ipynb"), "--chapter", "42"]) == 2
    assert "no chapter '42'" in capsys.readouterr().err


# ------------------------------------------------- renamed submissions, gradebook

def _checks_replaced(nb):
    """A learner replaced every check cell with a print (graded with its own checks, 7/7)."""
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = 'print("looks fine")'
    return nb


def _partly_right_00():
    """Task 1 right, task 2 reads past the end of x, task 3 a stub whose check the learner
    tries to switch off (rebinding the module's function, shadowing the name, patching
    the feedback module the checks use, and the harness's compare and torch.isnan that the
    engine uses, which a reload of the checks would only bind to again)."""
    nb = _read("exercises", "00_start_here")
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in _read("solutions", "00_start_here").cells}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "task1_solution":
            cell.source = by_id[gid].source.replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", "")
        elif gid == "task2_solution":
            cell.source = by_id[gid].source.replace("x[i] if i < x.size else float32(0.0)", "x[i]")
            assert cell.source != by_id[gid].source
    cheat = nbformat.v4.new_code_cell("checks.check_vector_sum = lambda *a, **k: None\n"
                                      "def check_vector_sum(*a, **k):\n    return None\n"
                                      "import gpulab.course.feedback as fb\n"
                                      "fb.require = lambda *a, **k: None\n"
                                      # the core the checks use: restored before each check
                                      "import gpulab.harness as _h, torch\n"
                                      "_h.compare = lambda *a, **k: (None, 0.0, 0.0)\n"
                                      "torch.isnan = lambda t: torch.zeros_like(t, dtype=torch.bool)")
    first_check = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    nb.cells.insert(first_check, cheat)
    nb.metadata.pop("gpulab")            # no chapter in its metadata: found from its content
    return nb


def test_renamed_submissions_are_graded_against_their_chapter_into_a_gradebook(tmp_path, capsys):
    folder = tmp_path / "submissions"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    nbformat.write(_checks_replaced(_read("exercises", "00_start_here")), folder / "my_submission.ipynb")
    nbformat.write(_partly_right_00(), folder / "alice_00_start_here (1).ipynb")
    nbformat.write(_notebook([]), folder / ".ipynb_checkpoints" / "my_submission-checkpoint.ipynb")
    (folder / "notes.txt").write_text("not a notebook")
    book_csv, book_json = tmp_path / "book.csv", tmp_path / "book.json"
    status = cli_main(["grade", str(folder), "--timeout", "240", "--csv", str(book_csv),
                       "--json", str(book_json), "--fail-under", "0.25"])
    assert status == 1, "my_submission scored 0, below --fail-under"
    assert "my_submission.ipynb scored 0%, below --fail-under" in capsys.readouterr().err

    rows = list(csv.DictReader(book_csv.open()))
    by = {(r["submission"], r["task"]): r for r in rows}
    assert {r["submission"] for r in rows} == {"my_submission.ipynb", "alice_00_start_here (1).ipynb"}
    assert len(rows) == 2 * (3 + 1), "three tasks and a total per submission"
    assert by[("my_submission.ipynb", "TOTAL")]["points"] == "0.0"
    assert by[("my_submission.ipynb", "TOTAL")]["max_points"] == "7.0"
    assert all(by[("my_submission.ipynb", t)]["passed"] == "False"
               for t in ("task1_brighten", "task2_block_sums", "task3_vector_sum"))
    alice = {t: by[("alice_00_start_here (1).ipynb", t)] for t in
             ("task1_brighten", "task2_block_sums", "task3_vector_sum", "TOTAL")}
    assert alice["task1_brighten"]["passed"] == "True"
    assert alice["task2_block_sums"]["passed"] == "False" and "Task 2" in alice["task2_block_sums"]["feedback"]
    assert alice["task3_vector_sum"]["passed"] == "False" and "not done yet" in alice["task3_vector_sum"]["feedback"]
    assert (alice["TOTAL"]["points"], alice["TOTAL"]["chapter"]) == ("2.0", "00")

    book = json.loads(book_json.read_text())
    assert [r["task"] for r in book["rows"]] == [r["task"] for r in rows]
    reports = {Path(s["notebook"]).name: s for s in book["submissions"]}
    assert reports["my_submission.ipynb"]["chapter"] == "00" and not reports["my_submission.ipynb"]["own_checks"]
    assert any("content" in note for note in reports["alice_00_start_here (1).ipynb"]["notes"])
