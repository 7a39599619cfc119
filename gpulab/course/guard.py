"""What a submission may not do while it is graded (installed by :mod:`.grading`).

An audit hook (PEP 578) in the grading kernel refuses to open any file under the blocked
folders (the course's ``solutions/``) and to start other programs (``!cat``,
``subprocess``, ``os.system``), which could read them for it. The one program allowed is
chapter 17's verifier worker, which installs the same hook from the environment variable
this sets, so a candidate running there cannot read the solutions either.
"""
from __future__ import annotations

import os
import sys

BLOCKED_ENV = "GPULAB_GRADING_BLOCKED"
_ALLOWED_PROGRAM = "gpulab.kernelagent.worker"
_PROGRAM_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn")


def _is_allowed_program(args) -> bool:
    argv = args[1] if len(args) > 1 else ()
    try:
        return _ALLOWED_PROGRAM in [os.fsdecode(a) for a in argv]
    except TypeError:
        return False


def install(blocked: list[str]) -> None:
    """Install the hook for this process and pass the blocked folders to its children."""
    blocked = [os.path.abspath(b) for b in blocked]
    os.environ[BLOCKED_ENV] = os.pathsep.join(blocked)

    def guard(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if any(path == b or path.startswith(b + os.sep) for b in blocked):
                raise PermissionError("reading the reference solutions is not allowed while grading")
        elif event in _PROGRAM_EVENTS and not _is_allowed_program(args):
            raise PermissionError("starting other programs is not allowed while grading")

    sys.addaudithook(guard)


def install_from_environment() -> None:
    """In a child process (the verifier's worker): the same guard, if grading is on."""
    blocked = os.environ.get(BLOCKED_ENV)
    if blocked:
        install(blocked.split(os.pathsep))
