"""What a submission may not do while it is graded (installed by :mod:`.grading`).

The grader's first, hidden cell calls :func:`install` with the course's ``solutions/``
folder. The mechanism is the core's :mod:`gpulab.sandbox` (an audit hook): the kernel may
not open files there, nor start other programs (``!cat``, ``subprocess``, ``os.system``)
that could read them. The only programs it may start are the helpers that package code
declared with :func:`gpulab.sandbox.trust_helper` (chapter 17's verifier worker), which
install the same hook in themselves, so a candidate running there cannot read the
solutions either. This module names no such helper: they register themselves.
"""
from __future__ import annotations

from gpulab.sandbox import BLOCKED_ENV, enter_helper, install, trusted_helpers

__all__ = ["BLOCKED_ENV", "install", "install_from_environment", "trusted_helpers"]

# the name the grader and older notebooks use for a child's set-up
install_from_environment = enter_helper
