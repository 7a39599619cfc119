"""The graded checks of every chapter's assignment, one module per chapter
(``gpulab.course.checks.chNN_slug``, named by the chapter registry), all declared as
tasks of one engine (:mod:`.engine`).

    from gpulab.course.checks import ch00_start_here as checks
    checks.check_brighten(brighten_kernel)

Importing this package imports no chapter; :func:`engine.all_tasks` imports them all.
"""
from .engine import FUNCTION, KERNEL, Case, Hint, Planted, Sizes, Task, all_tasks, tasks_of

__all__ = ["Task", "Sizes", "Hint", "Planted", "Case", "all_tasks", "tasks_of", "KERNEL", "FUNCTION"]
