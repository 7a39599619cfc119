"""Shared test helpers: twins equal on awkward sizes, wrong answers rejected with feedback.

    from helpers import assert_twins_equal, awkward_sizes, assert_rejected   # tests/ is on sys.path

A family's torch twin is the specification and its numba twin must agree with it on
sizes that catch indexing mistakes: 1, one short of a block, one past a block, and small
primes (never multiples of anything a kernel might assume).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch

__all__ = ["awkward_sizes", "assert_twins_equal", "assert_same_result", "assert_rejected"]

SMALL_PRIMES = (7, 13, 31)


def awkward_sizes(block: int = 32, primes: Iterable[int] = SMALL_PRIMES) -> list[int]:
    """1, block - 1, block + 1 and the given primes, without repeats, in increasing order."""
    if block < 2:
        raise ValueError(f"block must be at least 2, got {block}")
    return sorted({1, block - 1, block + 1, *primes})


def _fields(value) -> list[tuple[str, Any]] | None:
    """The named parts of a result made of several tensors (dataclass or named tuple)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return list(zip(value._fields, value))
    return None


def assert_same_result(expected, actual, where: str = "result", atol: float = 1e-5, rtol: float = 1e-5):
    """Compare two results part by part (tensors, numbers, tuples, dataclasses), naming the part."""
    named = _fields(expected)
    if named is not None:
        other = dict(_fields(actual) or [])
        for name, value in named:
            assert name in other, f"{where}: the numba twin's result has no {name!r}"
            assert_same_result(value, other[name], f"{where}.{name}", atol, rtol)
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), \
            f"{where}: expected {len(expected)} parts, got {actual!r:.200}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same_result(e, a, f"{where}[{i}]", atol, rtol)
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {type(actual).__name__}"
        assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        torch.testing.assert_close(actual.cpu(), expected.cpu(), atol=atol, rtol=rtol, equal_nan=True,
                                   msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, float):
        assert abs(actual - expected) <= atol + rtol * abs(expected), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_twins_equal(torch_fn: Callable, numba_fn: Callable, make_inputs: Callable[[int, torch.Generator], tuple],
                       sizes: Iterable[int] | None = None, seed: int = 0, atol: float = 1e-5,
                       rtol: float = 1e-5) -> int:
    """Run both twins on fresh inputs for every size and require equal results.

    ``make_inputs(size, generator)`` returns the positional arguments (on the CPU); each
    twin gets its own copy, so a twin that writes into its inputs cannot hide a difference,
    and the numba twin's copy is on ``gpulab.runtime.device`` (the GPU in GPU mode). Returns
    the number of sizes compared (so a caller can assert it is not zero).
    """
    from gpulab import runtime
    if not callable(torch_fn) or not callable(numba_fn) or not callable(make_inputs):
        raise TypeError("assert_twins_equal needs two twins and an input maker, all callable")
    sizes = list(awkward_sizes() if sizes is None else sizes)
    if not sizes:
        raise ValueError("assert_twins_equal needs at least one size")
    for size in sizes:
        generator = torch.Generator().manual_seed(seed + size)
        inputs = make_inputs(size, generator)
        copies = [x.clone().to(runtime.device) if isinstance(x, torch.Tensor) else x for x in inputs]
        expected = torch_fn(*inputs)
        actual = numba_fn(*copies)
        assert_same_result(expected, actual, f"{getattr(numba_fn, '__name__', 'twin')}(size={size})", atol, rtol)
    return len(sizes)


def assert_rejected(check: Callable[[Any], Any], answer: Any, *words: str) -> str:
    """A wrong ``answer`` must be rejected by ``check`` with feedback naming the mistake.

    ``check(answer)`` may raise (its message is the feedback) or return a result whose
    ``passed`` is false (its ``feedback`` or ``message`` is the feedback). Every one of
    ``words`` must appear in the feedback (case-insensitive). Returns the feedback.
    """
    try:
        result = check(answer)
    except Exception as error:   # the checks raise their feedback
        feedback = str(error)
    else:
        passed = getattr(result, "passed", result)
        assert passed is False or passed == 0, f"the wrong answer was accepted: {result!r:.300}"
        feedback = str(getattr(result, "feedback", None) or getattr(result, "message", "") or "")
    assert feedback.strip(), "the wrong answer was rejected without any feedback"
    missing = [w for w in words if w.lower() not in feedback.lower()]
    assert not missing, f"the feedback does not name {missing}: {feedback[:500]}"
    return feedback


# ---------------------------------------------------------------- planted answers

#: the least number of planted wrong answers a graded task declares
MIN_PLANTED = 5


def task_id(task) -> str:
    return f"ch{task.chapter}-task{task.number}"


def planted_tasks(number: str) -> list:
    """The graded tasks of chapter ``number``, declared in its checks module."""
    import importlib

    from gpulab.course.checks.engine import tasks_of
    from gpulab.course.registry import chapter

    importlib.import_module(chapter(number).checks_module)
    return tasks_of(number)


def assert_planted_rejected(task, as_on_a_gpu: bool = False) -> str:
    """Run every planted wrong answer of ``task`` (those a GPU can run, on a GPU); each
    must be rejected with feedback naming its mistake. Returns the mutation score line.

    ``as_on_a_gpu``: run only the answers a GPU runs, with the simulator's recorder
    (:mod:`gpulab.simtrace`) switched off as it is on a GPU: what the checks say there must
    name the mistake without the recorder's findings."""
    import gpulab
    from gpulab.course.feedback import TaskFailed

    assert len(task.planted) >= MIN_PLANTED, f"{task_id(task)} declares {len(task.planted)} planted answers"
    runnable = [p for p in task.planted if (gpulab.SIMULATOR and not as_on_a_gpu) or not p.simulator_only]
    if as_on_a_gpu:  # the engine binds the recorder at import: it is switched off by run's argument
        return _run_planted(task, runnable, TaskFailed, "as on a GPU ", recorder=False)
    return _run_planted(task, runnable, TaskFailed, "")


def _run_planted(task, runnable, TaskFailed, label: str, recorder: bool = True) -> str:
    accepted, unnamed = [], []
    for planted in runnable:
        try:
            task.run(planted.answer, recorder=recorder)
        except TaskFailed as exc:
            if planted.expect.lower() not in str(exc).lower():
                unnamed.append(f"{planted.name!r}: expected {planted.expect!r} in: {exc}")
        else:
            accepted.append(planted.name)
    rejected = len(runnable) - len(accepted)
    score = (f"mutation score {label}{task_id(task)} ({task.title}): {rejected}/{len(runnable)} rejected"
             + (f", {len(unnamed)} without the mistake named" if unnamed else ""))
    assert not accepted, f"{score}; planted wrong answers accepted: {accepted}"
    assert not unnamed, f"{score}; feedback did not name the mistake:\n" + "\n".join(unnamed)
    return score


def chapter_planted_tests(number: str):
    """The test of ``tests/chNN_slug/test_chNN_planted.py``, parametrized over chapter
    ``number``'s tasks: each planted wrong answer is rejected with its mistake named (the
    mutation score printed). A file per chapter lets the test workers share the chapters
    and the chapter's time budget count them. (That the real answers pass is what running
    the solution notebook under nbval shows, hidden tests included.)"""
    import pytest

    @pytest.mark.parametrize("task", planted_tasks(number), ids=task_id)
    def test_every_planted_wrong_answer_is_rejected_with_its_mistake_named(task, capsys):
        score = assert_planted_rejected(task)
        with capsys.disabled():
            print(f"\n  {score}")

    return test_every_planted_wrong_answer_is_rejected_with_its_mistake_named
