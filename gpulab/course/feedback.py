"""Learner-facing checks: a task either passes with a ✅ line or fails with a ❌ line that
says what was wrong. A failure raises :class:`TaskFailed` (an ``AssertionError``), so a
notebook run stops there and the grader counts the task as failed.

    from gpulab.course.feedback import task, require

    def check_task1(kernel):
        with task("Task 1: brighten an image"):
            require(is_kernel(kernel), "pass the kernel itself (decorated with @gpulab.kernel)")
            ...
"""
from __future__ import annotations

import contextlib

from ..harness import CheckFailed, ForbiddenCallError, ReferenceCalledError, code_of

__all__ = ["TaskFailed", "task", "require", "passed", "is_kernel"]


class TaskFailed(AssertionError):
    """A graded task's check found a wrong answer; the message says what was wrong."""

    def _render_traceback_(self):  # IPython shows just the message, not a traceback
        return [str(self)]


def passed(message: str) -> None:
    print(f"✅ {message}")


def require(condition: bool, message: str) -> None:
    """Fail the current task with ``message`` unless ``condition`` holds."""
    if not condition:
        raise TaskFailed(f"❌ {message}")


@contextlib.contextmanager
def task(title: str, success: str = "passed"):
    """Run a task's checks: print ✅ on success, turn any failure into a clear ❌."""
    try:
        yield
    except TaskFailed as exc:
        msg = str(exc).removeprefix("❌ ")
        raise TaskFailed(f"❌ {title}: {msg}") from None
    except NotImplementedError as exc:
        raise TaskFailed(f"❌ {title}: not done yet ({exc or 'the stub still raises NotImplementedError'})") from None
    except (ReferenceCalledError, ForbiddenCallError) as exc:
        raise TaskFailed(f"❌ {title}: {exc}") from None
    except CheckFailed as exc:
        raise TaskFailed(f"❌ {title}: {str(exc).removeprefix('❌ ')}") from None
    except Exception as exc:
        raise TaskFailed(f"❌ {title}: your code raised {type(exc).__name__}: {exc}") from exc
    passed(f"{title}: {success}")


def is_kernel(obj) -> bool:
    """True for a gpulab kernel or a numba.cuda kernel (not a plain Python function)."""
    from ..launch import Kernel

    if isinstance(obj, Kernel):
        return True
    return type(obj).__name__ in ("CUDADispatcher", "FakeCUDAKernel")


def require_own_kernel(kernel, *package_modules) -> None:
    """Fail when ``kernel`` is one of the course package's own kernels: the task asks the
    learner to write it, not to pass ``gpulab.<chapter>.kernels.<the answer>``."""
    code = code_of(kernel)
    for module in package_modules:
        for name, obj in vars(module).items():
            if is_kernel(obj) and code_of(obj) is code:
                raise TaskFailed(f"❌ that is the course package's own {module.__name__}.{name}: "
                                 "write the kernel yourself")

