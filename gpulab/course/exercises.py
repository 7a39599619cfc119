"""Generate learner exercises from instructor solutions (``solutions/`` -> ``exercises/``).

Markers in a solution notebook's code cells (nbgrader's, so an instructor can also use
nbgrader):

* ``### BEGIN SOLUTION`` ... ``### END SOLUTION``: replaced by ``# YOUR CODE HERE`` and
  ``raise NotImplementedError(hint)`` at the same indentation. The hint is the text of a
  ``### HINT: ...`` line inside the block, if there is one.
* ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``: removed (the grader restores
  them from the solution).

Outputs and execution counts are cleared. The result is deterministic, so a test can
regenerate every exercise in memory and fail when ``exercises/`` is stale.

Each exercise's metadata (``metadata.gpulab``) says which chapter it belongs to (the grader
uses it, whatever the file is renamed to) and holds a fingerprint of the cells it was
generated with. Learners work in ``exercises/``, so a file whose cells no longer match its
own fingerprint holds a learner's work: :func:`generate_all` (``gpulab exercises``, which
``make lab`` runs) never replaces it; with ``force`` it first keeps it as
``exercises/NN_slug.backup-YYYYMMDD-HHMMSS.ipynb`` (ignored by git).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from gpulab.launch import exercise_stub

__all__ = ["make_exercise", "exercise_text", "generate_all", "stale_exercises", "MarkerError",
           "fingerprint", "edited_by_learner", "Generated", "BACKUP_TAG"]

#: In a backup's name, between the exercise's stem and the date: ``00_start_here.backup-20261201-093000``.
BACKUP_TAG = ".backup-"

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
HINT = re.compile(r"^\s*### HINT:\s*(.*)$")


class MarkerError(ValueError):
    """A solution notebook's markers are unbalanced."""


def _strip_cell(source: str, where: str) -> tuple[str, int]:
    """Apply the markers to one cell's source; return (new source, stubs made)."""
    out: list[str] = []
    stubs = 0
    mode = None          # None, "solution" or "hidden"
    indent = ""
    hint = None
    for lineno, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN_SOLUTION or stripped == BEGIN_HIDDEN:
            if mode is not None:
                raise MarkerError(f"{where}, line {lineno}: {stripped!r} inside an open {mode} block")
            mode = "solution" if stripped == BEGIN_SOLUTION else "hidden"
            indent = line[: len(line) - len(line.lstrip())]
            hint = None
            continue
        if stripped == END_SOLUTION or stripped == END_HIDDEN:
            expected = "solution" if stripped == END_SOLUTION else "hidden"
            if mode != expected:
                raise MarkerError(f"{where}, line {lineno}: {stripped!r} without its BEGIN")
            if mode == "solution":
                message = hint or "replace this line with your code"
                out.extend(exercise_stub(indent, message))
                stubs += 1
            mode = None
            continue
        if mode == "solution":
            m = HINT.match(line)
            if m:
                hint = m.group(1).strip()
            continue
        if mode == "hidden":
            continue
        out.append(line)
    if mode is not None:
        raise MarkerError(f"{where}: a {mode} block is never closed")
    return "\n".join(out), stubs


def make_exercise(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The exercise version of a solution notebook (a new notebook; the input is unchanged)."""
    nb = nbformat.from_dict(solution)
    nb = nbformat.from_dict(nbformat.v4.upgrade(nb) if nb.nbformat < 4 else nb)
    for index, cell in enumerate(nb.cells):
        cell.pop("id", None)
        if cell.cell_type == "code":
            cell.source, stubs = _strip_cell(cell.source, f"{name}, cell {index}")
            cell.outputs = []
            cell.execution_count = None
            if stubs:
                cell.metadata.setdefault("gpulab", {})["stub"] = True
        elif BEGIN_SOLUTION in cell.source:
            cell.source, _ = _strip_cell(cell.source, f"{name}, cell {index}")
    info = dict(nb.metadata.get("gpulab", {}), generated_from=f"solutions/{name}",
                note="generated from the solution by `gpulab exercises` (authors: edit the solution); "
                     "a learner's edits here are never overwritten")
    number = _chapter_number(name)
    if number:
        info["chapter"] = number
    info["fingerprint"] = fingerprint(nb)
    nb.metadata["gpulab"] = info
    nb.metadata.pop("widgets", None)
    return nb


def _chapter_number(name: str) -> str | None:
    """The registered chapter of a solution file name (``00_start_here.ipynb`` -> ``"00"``)."""
    from .registry import chapter

    try:
        return chapter(Path(name).stem).number
    except KeyError:
        return None


def fingerprint(nb) -> str:
    """A hash of the cells' kinds and sources: what a learner changes by editing. Outputs,
    execution counts, cell ids and metadata are left out, so running or saving the notebook
    in Jupyter does not change it."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def edited_by_learner(path: Path) -> bool:
    """Whether the exercise at ``path`` may hold a learner's work: its cells differ from the
    fingerprint it was generated with, or it has none (or cannot be read)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return True
    recorded = nb.metadata.get("gpulab", {}).get("fingerprint")
    return recorded != fingerprint(nb)


def exercise_text(solution_path: Path) -> str:
    """The exercise notebook for ``solution_path`` as the exact text written to disk."""
    solution = nbformat.read(str(solution_path), as_version=4)
    exercise = make_exercise(solution, solution_path.name)
    # cell ids are not needed and would churn the diffs: write as nbformat 4.4
    exercise.nbformat_minor = 4
    return nbformat.writes(exercise, version=4) + "\n"


def _pairs(root: Path):
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        yield sol, root / "exercises" / sol.name


@dataclass
class Generated:
    """What :func:`generate_all` did."""
    written: list[Path] = field(default_factory=list)   # new or replaced exercises
    kept: list[Path] = field(default_factory=list)      # stale, but edited by a learner: left alone
    replaced: list[tuple[Path, Path]] = field(default_factory=list)  # (edited exercise, its backup), with force


def _backup_path(exercise: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = exercise.with_name(f"{exercise.stem}{BACKUP_TAG}{stamp}.ipynb")
    n = 1
    while backup.exists():   # two forced runs within a second
        backup = exercise.with_name(f"{exercise.stem}{BACKUP_TAG}{stamp}-{n}.ipynb")
        n += 1
    return backup


def generate_all(root: Path, force: bool = False) -> Generated:
    """Write ``exercises/X.ipynb`` for every ``solutions/X.ipynb`` where it is missing or out
    of date, except over a learner's edits: those are kept (``force``: backed up, then replaced)."""
    result = Generated()
    (root / "exercises").mkdir(exist_ok=True)
    for sol, ex in _pairs(root):
        text = exercise_text(sol)
        if ex.exists() and (ex.read_text() == text or _only_run(ex, text)):
            continue
        if ex.exists() and edited_by_learner(ex):
            if _learners_work_on_current_version(ex.read_text(), text):
                continue   # their edits of the current version: nothing newer to offer
            if not force:
                result.kept.append(ex)
                continue
            backup = _backup_path(ex)
            ex.replace(backup)
            result.replaced.append((ex, backup))
        tmp = ex.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(ex)
        result.written.append(ex)
    return result


def _only_run(exercise: Path, text: str) -> bool:
    """The learner ran the exercise (it has outputs) but its cells are still the ones
    ``text`` holds: nothing new to give them, so their outputs stay."""
    try:
        nb = nbformat.read(str(exercise), as_version=4)
    except Exception:
        return False
    has_outputs = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    return has_outputs and fingerprint(nb) == fingerprint(nbformat.reads(text, as_version=4))


def _is_backup(path: Path) -> bool:
    return BACKUP_TAG in path.name


def _committed_text(root: Path, path: Path) -> str | None:
    """``path`` as the last commit holds it (None when git or the file is not there)."""
    import subprocess

    try:
        run = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{path.relative_to(root).as_posix()}"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def _learners_work_on_current_version(text: str, generated: str) -> bool:
    """A learner edited the exercise, and it was generated from the current solution: the
    fingerprint it records is the one the generator would write now."""
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception:
        return False
    recorded = nb.metadata.get("gpulab", {}).get("fingerprint")
    return recorded != fingerprint(nb) and recorded == fingerprint(nbformat.reads(generated, as_version=4))


def stale_exercises(root: Path, committed: bool = False) -> list[str]:
    """Names of exercises that are missing, out of date, or have no solution.

    By default the files as they are: an exercise a learner edited counts as fresh while it
    was generated from the current solution (their work is theirs). ``committed=True``
    judges what the last commit holds instead (the maintainers' test: exercises/ is committed
    exactly as generated, whatever a learner's working copy holds); a file git does not
    know falls back to the working copy."""
    stale = []
    for sol, ex in _pairs(root):
        generated = exercise_text(sol)
        text = _committed_text(root, ex) if committed else None
        if text is None:
            text = ex.read_text() if ex.exists() else None
        if text == generated:
            continue
        if text is not None and not committed and _learners_work_on_current_version(text, generated):
            continue
        stale.append(sol.name)
    solutions = {p.name for p in (root / "solutions").glob("*.ipynb")}
    orphans = [p.name + " (no solution)" for p in (root / "exercises").glob("*.ipynb")
               if p.name not in solutions and not _is_backup(p)]
    return stale + orphans
