"""Grade a submitted assignment notebook: a score per task, whatever the submission does.

How it works:

1. **Which chapter.** A submission is graded against its chapter's solution whatever its
   file name (``my_submission.ipynb``, ``alice_00_start_here.ipynb``...). The chapter comes
   from, in order: ``--solution`` or ``--chapter`` (the instructor), the notebook's metadata
   (``metadata.gpulab.chapter``, which ``gpulab exercises`` writes into every exercise), or
   its content (its lines and graded cells matched against each chapter's exercise). The
   chapter registry (:mod:`.registry`) says where each chapter's solution is. When no
   chapter is found, the submission scores 0 with a clear error, unless the instructor
   passes ``use_submission_checks`` (``--use-submission-checks``): then its own check cells
   are used, and the report says so loudly, because a learner could have edited them.
2. **Checks from the solution.** The submission is copied into a fresh temporary folder (so
   nothing it writes lands in the course files) and its graded cells (nbgrader
   ``grade: true``) are replaced by the solution's versions, hidden tests included, each
   preceded by a reload of the chapter's checks module and the solution's imports: a
   learner cannot weaken a check by editing it, rebinding it or patching its module.
3. **The guard.** A first, hidden cell installs an audit hook in the kernel (:mod:`.guard`)
   that refuses to open any file of the course's ``solutions/`` folder and to start other
   programs: reading the reference answer fails.
4. **Running.** The cells run one by one in a fresh Jupyter kernel with a time limit per
   cell. An error only marks its cell. A cell that hangs is interrupted; a cell that kills
   the kernel (``os._exit``, a segfault) or breaks its CUDA context is recorded and a new
   kernel replays the cells that had succeeded before it, so the remaining tasks are still
   graded.
5. **Scores.** A task scores its points when its graded cell ran without error; otherwise
   its feedback is the cell's full error message (the checks' ❌ text).

:func:`grade_folder` grades every notebook of a folder into one :class:`Gradebook`
(CSV/JSON, one row per submission and task plus a total per submission), as nbgrader does.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from . import pristine, registry

__all__ = ["grade_notebook", "grade_folder", "identify_chapter", "GradeReport", "Gradebook",
           "TaskResult", "graded_cells", "OWN_CHECKS_WARNING"]

#: Said in the report and on stderr whenever a submission is graded with its own checks.
OWN_CHECKS_WARNING = ("WARNING: graded with the submission's OWN check cells (--use-submission-checks): "
                      "a learner could have edited them, so this score proves nothing")


@dataclass
class TaskResult:
    grade_id: str
    points: float
    max_points: float
    passed: bool
    feedback: str


@dataclass
class GradeReport:
    notebook: str
    tasks: list[TaskResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chapter: str | None = None       # two digits, or None when it could not be found
    solution: str | None = None      # the solution notebook the checks came from
    error: str | None = None         # why the submission could not be graded (then it scores 0)
    own_checks: bool = False         # graded with the submission's own check cells

    @property
    def score(self) -> float:
        return sum(t.points for t in self.tasks)

    @property
    def max_score(self) -> float:
        return sum(t.max_points for t in self.tasks)

    @property
    def fraction(self) -> float:
        """The score as a fraction of the maximum (0 when there is nothing to score)."""
        return self.score / self.max_score if self.max_score else 0.0

    def text(self, width: int = 100) -> str:
        """The full report; long feedback is wrapped, never cut."""
        against = f" against {self.solution}" if self.solution else ""
        lines = [f"Grading {self.notebook}" + (f" (chapter {self.chapter}{against})" if self.chapter else "")]
        if self.own_checks:
            lines.append(f"  !!! {OWN_CHECKS_WARNING} !!!")
        if self.error:
            lines.append(f"  error: {self.error}")
        for t in self.tasks:
            mark = "✅" if t.passed else "❌"
            lines.append(f"  {mark} {t.grade_id}: {t.points:g}/{t.max_points:g}")
            lines += _wrapped(t.feedback, "      ", width)
        lines.append(f"  score: {self.score:g}/{self.max_score:g} ({self.fraction:.0%})")
        lines += _wrapped("\n".join(self.notes), "  note: ", width, first_only=False)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "chapter": self.chapter, "solution": self.solution,
                "score": self.score, "max_score": self.max_score, "fraction": self.fraction,
                "error": self.error, "own_checks": self.own_checks,
                "tasks": [asdict(t) for t in self.tasks], "notes": self.notes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)


def _wrapped(text: str, indent: str, width: int, first_only: bool = True) -> list[str]:
    """Wrap each line of ``text`` under ``indent`` (a note prefix repeats per note)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        prefix = indent if (not first_only or not out) else " " * len(indent)
        out += textwrap.wrap(line, width, initial_indent=prefix, subsequent_indent=" " * len(indent),
                             break_long_words=False, break_on_hyphens=False) or [prefix]
    return out


# ---------------------------------------------------------------- the notebook's cells

def _grading_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def graded_cells(nb) -> dict[str, int]:
    """``{grade_id: cell index}`` of the cells that carry points."""
    found = {}
    for i, cell in enumerate(nb.cells):
        meta = _grading_meta(cell)
        if cell.cell_type == "code" and meta.get("grade") and meta.get("grade_id"):
            found[meta["grade_id"]] = i
    return found


def _points(cell) -> float:
    return float(_grading_meta(cell).get("points", 1))


# ----------------------------------------------------------------- which chapter

#: Lines shorter than this (``import torch``, ``)``) say nothing about which chapter it is.
_DISTINCTIVE = 12
#: A submission must share at least this fraction of a chapter's exercise lines to be taken
#: for it, and clearly more than with any other chapter.
_MIN_MATCH, _MIN_LEAD = 0.3, 0.15


def _lines(nb) -> set[str]:
    return {line.strip() for cell in nb.cells for line in cell.source.splitlines()
            if len(line.strip()) >= _DISTINCTIVE}


def _solutions(root: Path):
    """(chapter, solution path) for every registered chapter whose solution exists."""
    for ch in registry.CHAPTERS:
        if (root / ch.solution).exists():
            yield ch, root / ch.solution


def _match_by_content(submission, root: Path) -> tuple[registry.Chapter | None, str]:
    """The chapter whose exercise the submission resembles most, if clearly one."""
    from .exercises import make_exercise

    mine, my_ids = _lines(submission), set(graded_cells(submission))
    scores = []
    for ch, path in _solutions(root):
        solution = nbformat.read(str(path), as_version=4)
        exercise_lines = _lines(make_exercise(solution, path.name))
        # a solved task shares the solution's lines rather than the stub's
        shared = len(mine & (exercise_lines | _lines(solution))) / max(len(exercise_lines), 1)
        same_ids = len(my_ids & set(graded_cells(solution)))
        scores.append((min(shared, 1.0), same_ids, ch))
    scores.sort(key=lambda s: (s[0], s[1]), reverse=True)
    if not scores or scores[0][0] < _MIN_MATCH:
        return None, ""
    best = scores[0]
    if len(scores) > 1 and best[0] - scores[1][0] < _MIN_LEAD:
        return None, (f"its content fits chapters {best[2].number} and {scores[1][2].number} "
                      "about equally")
    return best[2], f"its content matches {best[0]:.0%} of chapter {best[2].number}'s exercise"


def identify_chapter(submission, root: Path, key: str | None = None) -> tuple[registry.Chapter | None, str]:
    """The submission's chapter and how it was found (``key``: the instructor's ``--chapter``).

    Returns ``(None, why)`` when no chapter with a solution could be found. The instructor's
    key must name a registered chapter (``ValueError`` otherwise).
    """
    if key is not None:
        return _registered(key), "given with --chapter"
    claimed = str(submission.metadata.get("gpulab", {}).get("chapter", "") or "")
    doubt = ""
    if claimed:
        try:
            ch = registry.chapter(claimed)
        except KeyError:
            doubt = f"its metadata names chapter {claimed!r}, which does not exist; "
        else:
            if (root / ch.solution).exists():
                return ch, "from the notebook's metadata"
            doubt = f"its metadata names chapter {ch.number}, which has no solution notebook; "
    ch, how = _match_by_content(submission, root)
    if ch is not None:
        return ch, doubt + how
    return None, doubt + (how or "its content matches no chapter's exercise")


def _registered(key: str) -> registry.Chapter:
    try:
        return registry.chapter(key)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


# ------------------------------------------------------------- preparing the notebook

_GUARD = '''\
import os as _os
_os.environ["GPULAB_GRADING"] = "1"
from gpulab.course import guard as _guard, pristine as _pristine
_guard.install({blocked!r})
_pristine.install({checks!r})
del _guard, _pristine
'''

# Run before each restored check cell. The shared course modules are reloaded first and the
# chapter's checks module last, so it binds to fresh copies of what it uses; a module that
# is gone from sys.modules is imported afresh (which also resets its parent package's
# attribute), and one that does not exist (yet, or any more) is skipped.
_RELOAD = '''\
import importlib as _gl_importlib, sys as _gl_sys
_gl_first, _gl_last = {first!r}, {last!r}
_gl_shared = sorted(n for n in _gl_sys.modules if n.startswith("gpulab.course.checks.") and n not in _gl_last)
for _gl_name in _gl_first + _gl_shared + _gl_last:
    try:
        if _gl_name in _gl_sys.modules:
            _gl_importlib.reload(_gl_sys.modules[_gl_name])
        else:
            _gl_importlib.import_module(_gl_name)
    except ModuleNotFoundError as _gl_missing:
        if _gl_missing.name != _gl_name:
            raise
'''


def _checks_modules(chapter: registry.Chapter | None) -> tuple[list[str], list[str]]:
    """(shared modules reloaded first, the chapter's own checks reloaded last)."""
    first = ["gpulab.course.feedback", "gpulab.course.checks"]
    if chapter is None:
        return first, []
    return first, [chapter.checks_module]


def _check_prelude(solution, chapter: registry.Chapter | None) -> str:
    """Lines run before each restored check cell: the checks modules are reloaded and the
    solution's imports run again, so a submission that rebinds a check
    (``checks.check_task1 = lambda *a: None``, or its own ``def check_task1``) is undone."""
    imports = []
    for cell in solution.cells:
        if cell.cell_type != "code" or _grading_meta(cell).get("grade"):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:          # IPython magics: not plain Python, and no imports we need
            continue
        imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    first, last = _checks_modules(chapter)
    return (pristine.RESTORE_LINE + _RELOAD.format(first=first, last=last)
            + "".join(line + "\n" for line in dict.fromkeys(imports)))


def _restore_checks(submission, solution, chapter) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission's cells with its graded cells replaced by the solution's."""
    notes = []
    nb = nbformat.from_dict(submission)
    reference = {gid: solution.cells[i] for gid, i in graded_cells(solution).items()}
    present = graded_cells(nb)
    prelude = _check_prelude(solution, chapter)
    for gid, i in present.items():
        if gid in reference:
            nb.cells[i].source = prelude + reference[gid].source
        else:
            notes.append(f"graded cell {gid!r} is not one of the solution's: it carries no points")
            nb.cells[i].metadata["nbgrader"] = dict(_grading_meta(nb.cells[i]), grade=False)
    for gid in reference:
        if gid not in present:
            notes.append(f"graded cell {gid!r} is missing from the submission: appended from the solution")
            cell = nbformat.from_dict(reference[gid])
            cell.source = prelude + cell.source
            nb.cells.append(cell)
    return nb, notes


# ------------------------------------------------------------------ running the cells

def _errored(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = out.get("evalue", "")
            return f"{out.get('ename', 'Error')}: {value}".strip()
    return None


#: The grading guard's cell imports torch and numba (and on a GPU creates a CUDA context): on
#: a loaded machine that can take longer than a learner's cell may, so it has its own limit.
GUARD_TIMEOUT_S = 300.0


class GuardNotInstalled(RuntimeError):
    """The first, hidden cell (the guard) failed: nothing may run unguarded, so no cell runs."""


def _run_guard(client, nb, cell_timeout: float) -> None:
    client.timeout = max(cell_timeout, GUARD_TIMEOUT_S)
    try:
        client.execute_cell(nb.cells[0], 0)
    except Exception as exc:       # a timeout or a dead kernel: the guard is not in place
        raise GuardNotInstalled(f"{type(exc).__name__}: {exc}"[:500]) from None
    finally:
        client.timeout = cell_timeout
    error = _errored(nb.cells[0])
    if error is not None:
        raise GuardNotInstalled(error[:500])


def _run_cells(nb, workdir: Path, cell_timeout: float) -> dict[int, str]:
    """Execute the cells in order; return ``{cell index: error text}`` for failed cells.

    Cell 0 is the grading guard. Every kernel runs it first (with its own time limit); if
    it fails, :class:`GuardNotInstalled` is raised and no submitted cell runs, since a cell
    that ran unguarded could read the solutions. Survives hangs and kernel deaths: a new
    kernel runs the guard, replays the cells that succeeded so far and goes on after the
    cell that failed. A CUDA error (an out-of-bounds access on a real GPU, say) leaves the
    kernel's CUDA context broken for every later cell, so it is treated like a crash.
    nbclient files outputs by cell index, so every cell executed is the notebook's own
    cell at its own index.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    failures: dict[int, str] = {}
    succeeded: list[int] = []
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert code_cells and code_cells[0] == 0, "cell 0 must be the grading guard"
    position = 1
    while position < len(code_cells):
        client = NotebookClient(nb, timeout=cell_timeout, allow_errors=True, interrupt_on_timeout=False,
                                kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
        with client.setup_kernel():
            _run_guard(client, nb, cell_timeout)
            for index in succeeded:  # replay after a crash or a hang
                client.execute_cell(nb.cells[index], index)
            while position < len(code_cells):
                index = code_cells[position]
                position += 1
                try:
                    client.execute_cell(nb.cells[index], index)
                except CellTimeoutError:
                    failures[index] = f"cell did not finish within {cell_timeout:g} s (stopped)"
                    break
                except DeadKernelError:
                    failures[index] = "the kernel died while running this cell (crash)"
                    break
                error = _errored(nb.cells[index])
                if error is None:
                    succeeded.append(index)
                else:
                    failures[index] = error
                    if _breaks_the_cuda_context(error):
                        break
    return failures


#: Error texts after which a process's CUDA context is unusable (sticky errors).
_STICKY_CUDA_ERRORS = ("CUDA error", "CudaAPIError", "AcceleratorError", "CUDA_ERROR_",
                       "illegal memory access", "unspecified launch failure")


def _breaks_the_cuda_context(error: str) -> bool:
    return any(marker in error for marker in _STICKY_CUDA_ERRORS)


# ------------------------------------------------------------------------- grading

def _read_notebook(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable notebook: {exc}") from exc


def _ungraded(report: GradeReport, submission, error: str) -> GradeReport:
    """Every graded cell of the submission scores 0, with ``error`` as the reason."""
    report.error = error
    for gid, index in graded_cells(submission).items():
        report.tasks.append(TaskResult(gid, 0.0, _points(submission.cells[index]), False, error))
    return report


def grade_notebook(path: Path, solution: Path | None = None, cell_timeout: float = 120.0,
                   course_root: Path | None = None, chapter: str | None = None,
                   use_submission_checks: bool = False) -> GradeReport:
    """Grade the submitted notebook at ``path``; see the module docstring for how.

    ``solution`` or ``chapter`` override how the chapter is found. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable one or an
    unknown ``chapter``; a submission whose chapter cannot be found scores 0 (its report's
    ``error`` says why) unless ``use_submission_checks``.
    """
    path = Path(path)
    submission = _read_notebook(path)
    root = Path(course_root) if course_root else registry.course_root(path.parent)
    report = GradeReport(str(path))
    ch = None
    if solution is not None:
        solution = Path(solution)
        solution_nb = _read_notebook(solution)
        ch = _registered(chapter) if chapter else _chapter_of_solution(solution)
        report.notes.append(f"checks from {solution} (given with --solution)")
    else:
        ch, how = identify_chapter(submission, root, chapter)
        if ch is not None and not (root / ch.solution).exists():
            return _ungraded(report, submission, f"chapter {ch.number} has no solution notebook "
                                                 f"({ch.solution} is missing)")
        if ch is not None:
            solution = root / ch.solution
            solution_nb = _read_notebook(solution)
            report.notes.append(f"chapter {ch.number} ({ch.slug}): {how}")
        elif not use_submission_checks:
            return _ungraded(report, submission,
                             f"could not tell which chapter this submission belongs to ({how}); "
                             "grade it with --chapter NN")
        else:
            solution_nb = None
            report.own_checks = True
            report.notes.append(f"no chapter found ({how})")
    report.chapter = ch.number if ch else None
    report.solution = str(solution) if solution else None
    if solution_nb is None:
        nb = nbformat.from_dict(submission)
    else:
        nb, notes = _restore_checks(submission, solution_nb, ch)
        report.notes += notes
    blocked = [os.path.abspath(root / "solutions")] + ([os.path.abspath(solution)] if solution else [])
    checks = [ch.checks_module] if ch is not None else []
    nb.cells.insert(0, nbformat.v4.new_code_cell(_GUARD.format(blocked=blocked, checks=checks)))
    with tempfile.TemporaryDirectory(prefix="gpulab-grade-") as tmp:
        workdir = Path(tmp)
        for folder in ("notebooks", "exercises"):  # relative paths a notebook may use
            (workdir / folder).mkdir()
        shutil.copy(path, workdir / "exercises" / path.name)
        try:
            failures = _run_cells(nb, workdir / "exercises", cell_timeout)
        except GuardNotInstalled as exc:
            return _ungraded(report, submission, f"the grader could not install its guard, so nothing was run: {exc}")
    for gid, index in graded_cells(nb).items():
        points, error = _points(nb.cells[index]), failures.get(index)
        report.tasks.append(TaskResult(gid, 0.0 if error else points, points, error is None, error or ""))
    return report


def _chapter_of_solution(solution: Path) -> registry.Chapter | None:
    """The registered chapter whose solution this is (by file name), if any."""
    try:
        return registry.chapter(solution.stem)
    except KeyError:
        return None


# ------------------------------------------------------------------------ gradebook

def submissions_in(folder: Path) -> list[Path]:
    """The notebooks a folder holds (not its sub-folders, not Jupyter's checkpoints)."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if p.is_file() and "-checkpoint" not in p.stem)


@dataclass
class Gradebook:
    """The reports of a folder of submissions, one row per submission and task."""
    folder: str
    reports: list[GradeReport] = field(default_factory=list)

    COLUMNS = ("submission", "chapter", "task", "points", "max_points", "passed", "feedback")

    def rows(self) -> list[dict]:
        """One row per task of each submission, then its total (task ``TOTAL``)."""
        out = []
        for r in self.reports:
            name = Path(r.notebook).name
            for t in r.tasks:
                out.append({"submission": name, "chapter": r.chapter or "", "task": t.grade_id,
                            "points": t.points, "max_points": t.max_points, "passed": t.passed,
                            "feedback": t.feedback})
            out.append({"submission": name, "chapter": r.chapter or "", "task": "TOTAL",
                        "points": r.score, "max_points": r.max_score,
                        "passed": not r.error and r.max_score > 0 and r.score == r.max_score,
                        "feedback": OWN_CHECKS_WARNING if r.own_checks else (r.error or "")})
        return out

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()

    def to_json(self) -> str:
        return json.dumps({"folder": self.folder, "rows": self.rows(),
                           "submissions": [r.to_dict() for r in self.reports]}, indent=1, ensure_ascii=False)

    def text(self, width: int = 100) -> str:
        parts = [r.text(width) for r in self.reports]
        summary = [f"Gradebook of {self.folder}: {len(self.reports)} submission(s)"]
        summary += [f"  {Path(r.notebook).name}: {r.score:g}/{r.max_score:g}" + (f"  ({r.error})" if r.error else "")
                    for r in self.reports]
        return "\n\n".join(parts + ["\n".join(summary)])


def grade_folder(folder: Path, **options) -> Gradebook:
    """Grade every notebook in ``folder`` (options as for :func:`grade_notebook`). A
    notebook that cannot be read gets a row with its error and a score of 0."""
    book = Gradebook(str(folder))
    for path in submissions_in(folder):
        try:
            book.reports.append(grade_notebook(path, **options))
        except ValueError as exc:
            book.reports.append(GradeReport(str(path), error=str(exc)))
    return book


def warn_own_checks(report: GradeReport) -> None:
    """Say it on stderr too, where an instructor's script will not miss it."""
    if report.own_checks:
        print(f"gpulab grade: {Path(report.notebook).name}: {OWN_CHECKS_WARNING}", file=sys.stderr)
