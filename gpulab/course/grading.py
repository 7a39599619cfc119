"""Grade a submitted assignment notebook: a score per task, whatever the submission does.

How it works:

1. The submission is copied into a fresh temporary folder (so nothing it writes lands in
   the course files) and its graded cells (nbgrader ``grade: true``) are replaced by the
   instructor's versions from the solution notebook, hidden tests included, each preceded
   by a reload of the course's check modules and the solution's imports: a learner
   cannot weaken a check by editing it or by rebinding it.
2. A first, hidden cell installs an audit hook in the kernel (:mod:`.guard`) that refuses
   to open any file of the course's ``solutions/`` folder and to start other programs:
   reading the reference answer fails.
3. The cells run one by one in a fresh Jupyter kernel with a time limit per cell. An
   error only marks its cell. A cell that hangs is interrupted; a cell that kills the
   kernel (``os._exit``, a segfault) is recorded and a new kernel replays the cells
   that had succeeded before it, so the remaining tasks are still graded.
4. A task scores its points when its graded cell ran without error.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

__all__ = ["grade_notebook", "GradeReport", "TaskResult", "graded_cells"]


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

    @property
    def score(self) -> float:
        return sum(t.points for t in self.tasks)

    @property
    def max_score(self) -> float:
        return sum(t.max_points for t in self.tasks)

    def text(self) -> str:
        lines = [f"Grading {self.notebook}"]
        for t in self.tasks:
            mark = "✅" if t.passed else "❌"
            lines.append(f"  {mark} {t.grade_id}: {t.points:g}/{t.max_points:g}" +
                         (f"  {t.feedback}" if t.feedback else ""))
        lines.append(f"  score: {self.score:g}/{self.max_score:g}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                           "tasks": [asdict(t) for t in self.tasks], "notes": self.notes}, indent=1)


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


_GUARD = '''\
import os as _os
_os.environ["GPULAB_GRADING"] = "1"
from gpulab.course import guard as _guard
_guard.install({blocked!r})
del _guard
'''


def _errored(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = out.get("evalue", "")
            return f"{out.get('ename', 'Error')}: {value}".strip()
    return None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _prepare(submission, solution) -> tuple[nbformat.NotebookNode, list[str]]:
    """Submission cells with graded cells restored from the solution."""
    notes = []
    nb = nbformat.from_dict(submission)
    if solution is None:
        notes.append("no solution notebook found: graded with the submission's own check cells")
        return nb, notes
    reference = {gid: solution.cells[i] for gid, i in graded_cells(solution).items()}
    present = graded_cells(nb)
    prelude = _check_prelude(solution)
    for gid, i in present.items():
        if gid in reference:
            nb.cells[i].source = prelude + reference[gid].source
    for gid in reference:
        if gid not in present:
            notes.append(f"graded cell {gid!r} is missing from the submission: appended from the solution")
            cell = nbformat.from_dict(reference[gid])
            cell.source = prelude + cell.source
            nb.cells.append(cell)
    return nb, notes


def _check_prelude(solution) -> str:
    """Lines run before each restored check cell: the course's check modules are reloaded
    and the solution's imports run again, so a submission that rebinds a check
    (``A.check_task1 = lambda *a: None``, or its own ``def check_task1``) is undone."""
    imports = []
    for cell in solution.cells:
        if cell.cell_type != "code" or _grading_meta(cell).get("grade"):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:          # IPython magics: not plain Python, and no imports we need
            continue
        imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    reload = ("import importlib as _gl_importlib, sys as _gl_sys\n"
              "for _gl_name in [n for n in list(_gl_sys.modules) if n.startswith('gpulab.') and "
              "n.rsplit('.', 1)[-1] in ('assignment', 'checks')]:\n"
              "    _gl_importlib.reload(_gl_sys.modules[_gl_name])\n")
    return reload + "".join(line + "\n" for line in dict.fromkeys(imports))


def _run_cells(nb, workdir: Path, cell_timeout: float) -> dict[int, str]:
    """Execute the cells in order; return ``{cell index: error text}`` for failed cells.

    Survives hangs and kernel deaths: a new kernel replays the cells that succeeded so
    far (the first cell, the grading guard, always succeeds first) and goes on after the
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
    position = 0
    while position < len(code_cells):
        client = NotebookClient(nb, timeout=cell_timeout, allow_errors=True, interrupt_on_timeout=False,
                                kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
        with client.setup_kernel():
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


def grade_notebook(path: Path, solution: Path | None = None, cell_timeout: float = 120.0,
                   course_root: Path | None = None) -> GradeReport:
    """Grade the submitted notebook at ``path``; see the module docstring for how."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        submission = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable notebook: {exc}") from exc
    root = Path(course_root) if course_root else Path(__file__).resolve().parents[2]
    if solution is None:
        candidate = root / "solutions" / path.name
        solution = candidate if candidate.exists() else None
    solution_nb = nbformat.read(str(solution), as_version=4) if solution else None
    nb, notes = _prepare(submission, solution_nb)
    blocked = [os.path.abspath(root / "solutions")]
    if solution:
        blocked.append(os.path.abspath(solution))
    nb.cells.insert(0, nbformat.v4.new_code_cell(_GUARD.format(blocked=blocked)))
    report = GradeReport(str(path), notes=notes)
    with tempfile.TemporaryDirectory(prefix="gpulab-grade-") as tmp:
        workdir = Path(tmp)
        for folder in ("notebooks", "exercises"):  # relative paths a notebook may use
            (workdir / folder).mkdir()
        shutil.copy(path, workdir / "exercises" / path.name)
        failures = _run_cells(nb, workdir / "exercises", cell_timeout)
    for gid, index in graded_cells(nb).items():
        points = float(_grading_meta(nb.cells[index]).get("points", 1))
        error = failures.get(index)
        if error is None:
            report.tasks.append(TaskResult(gid, points, points, True, ""))
        else:
            report.tasks.append(TaskResult(gid, 0.0, points, False, _short(error)))
    return report
