"""The grading sandbox: an audit hook that keeps a graded notebook away from the solutions.

Core layer: this module knows no chapter and no course code. The course's grader
(:mod:`gpulab.course.guard`) turns it on in the kernel that runs a submission; from then
on (PEP 578 audit hook) the process may not

* open a file under the blocked folders (the course's ``solutions/``), and
* start other programs (``!cat``, ``subprocess``, ``os.system``), which could read them.

Some package code must start a helper program of its own: chapter 17's verifier runs
untrusted kernels in a worker process. Such a helper is declared here, by the family that
owns it, with :func:`trust_helper` (the module is run as ``python -m <module>``), and the
helper calls :func:`enter_helper` first thing, which installs the same hook in it from the
environment. So the guard never names a family's module, and no family imports the course.

A helper is only started when its environment still carries this process's blocked
folders: a submission that strips the variable (``env={}``) to get an unguarded helper is
refused like any other program.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["BLOCKED_ENV", "install", "enter_helper", "trust_helper", "trusted_helpers"]

BLOCKED_ENV = "GPULAB_GRADING_BLOCKED"
_PROGRAM_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn")
_PACKAGE_DIR = Path(__file__).resolve().parent
_trusted: set[str] = set()


def trust_helper(module: str) -> None:
    """Declare ``python -m <module>`` a helper that may start while grading.

    Only modules of the gpulab package qualify, and the helper must call
    :func:`enter_helper` before it runs anything it was sent.
    """
    if not isinstance(module, str) or not module.startswith("gpulab."):
        raise ValueError(f"only a module of the gpulab package can be a trusted helper, got {module!r}")
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or _PACKAGE_DIR not in origin.parents:
        raise ValueError(f"{module!r} is not a module inside the installed gpulab package")
    _trusted.add(module)


def trusted_helpers() -> frozenset[str]:
    """The modules declared with :func:`trust_helper` so far."""
    return frozenset(_trusted)


def _as_text(value) -> str | None:
    try:
        return os.fsdecode(value)
    except TypeError:
        return None


def _is_trusted_helper(event: str, args, blocked_value: str) -> bool:
    """Whether this program start is ``python -m <trusted helper>`` with the guard passed on."""
    if event != "subprocess.Popen" or len(args) < 4:
        return False
    argv, env = args[1], args[3]
    if isinstance(argv, (str, bytes)) or not argv or len(argv) != 3:
        return False
    exe, flag, module = (_as_text(a) for a in argv)
    if flag != "-m" or module not in _trusted or exe is None:
        return False
    if os.path.realpath(exe) != os.path.realpath(sys.executable):
        return False
    # the child re-installs the guard from this variable: without it, it would run unguarded
    if env is None:
        passed_on = os.environ.get(BLOCKED_ENV)
    else:
        passed_on = next((value for key, value in env.items() if _as_text(key) == BLOCKED_ENV), None)
    return passed_on is not None and _as_text(passed_on) == blocked_value


def install(blocked: list[str]) -> None:
    """Install the hook in this process; children inherit the blocked folders by environment."""
    blocked = [os.path.abspath(b) for b in blocked]
    blocked_value = os.pathsep.join(blocked)
    os.environ[BLOCKED_ENV] = blocked_value

    def guard(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if any(path == b or path.startswith(b + os.sep) for b in blocked):
                raise PermissionError("reading the reference solutions is not allowed while grading")
        elif event in _PROGRAM_EVENTS and not _is_trusted_helper(event, args, blocked_value):
            raise PermissionError("starting other programs is not allowed while grading")

    sys.addaudithook(guard)


def enter_helper() -> None:
    """First call of a trusted helper: the same guard as its parent's, if grading is on."""
    blocked = os.environ.get(BLOCKED_ENV)
    if blocked:
        install(blocked.split(os.pathsep))
