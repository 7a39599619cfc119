"""Undo, before each graded check, what the graded notebook did to the code the checks use.

A submission runs in the same Python process as the checks that judge it, so it can rebind
what they call: ``gpulab.harness.compare = lambda *a, **k: (None, 0, 0)``, or
``torch.isnan = ...``. Reloading the checks modules does not help, since they bind afresh
to the patched functions. So the grader's first cell, before any learner code, calls
:func:`install`: it records every function, class and module bound in gpulab's modules,
torch, ``torch.Tensor``, numpy, math and builtins, and adds an audit hook (which Python lets
nobody remove) that puts them all back when the event ``gpulab.pristine.restore`` is raised.
Each restored check cell raises it first (:data:`RESTORE_LINE`).

Only callables and modules are put back, not data (caches and counters change legitimately).
This raises the bar; it is not a sandbox: code in the same process can still reach the
recorded objects through the garbage collector. An out-of-process grader would close that.
"""
from __future__ import annotations

import sys
import types

__all__ = ["install", "RESTORE_EVENT", "RESTORE_LINE"]

RESTORE_EVENT = "gpulab.pristine.restore"
#: the line a check cell starts with
RESTORE_LINE = f"__import__('sys').audit({RESTORE_EVENT!r})\n"

_MISSING = object()


def _watched(checks_modules) -> list:
    """The namespaces whose functions the checks rely on (imported now, so all are there):
    every gpulab module once the chapter's checks module (and so its family) is imported."""
    import builtins
    import importlib
    import math

    import numpy
    import torch

    import gpulab  # noqa: F401
    import gpulab.course.checks.engine  # noqa: F401
    import gpulab.course.feedback  # noqa: F401
    import gpulab.harness  # noqa: F401
    import gpulab.simtrace  # noqa: F401

    for name in checks_modules:
        importlib.import_module(name)
    gpulab_modules = [m for name, m in sorted(sys.modules.items())
                      if m is not None and (name == "gpulab" or name.startswith("gpulab."))]
    return [*gpulab_modules, torch, torch.Tensor, torch.nn.functional, numpy, math, builtins]


def _restorable(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType)


def _snapshot(namespaces) -> list[tuple[object, dict]]:
    return [(ns, {k: v for k, v in vars(ns).items() if _restorable(v)}) for ns in namespaces]


def _restore(snapshot) -> list[str]:
    """Put back every recorded callable that was rebound or deleted; the names restored."""
    restored = []
    for ns, saved in snapshot:
        current = vars(ns)
        for name, value in saved.items():
            if current.get(name, _MISSING) is not value:
                try:
                    setattr(ns, name, value)
                    restored.append(f"{getattr(ns, '__name__', ns)}.{name}")
                except (AttributeError, TypeError):  # a read-only slot: it cannot have changed
                    pass
    return restored


def install(checks_modules=()) -> None:
    """Record the pristine functions (after importing ``checks_modules``, the chapter's
    checks) and install the hook that restores them."""
    snapshot = _snapshot(_watched(checks_modules))

    def hook(event, args):
        if event == RESTORE_EVENT:
            _restore(snapshot)

    sys.addaudithook(hook)
