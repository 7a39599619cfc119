"""The checks engine: a graded task is a declaration; one engine runs every task.

GPU-Puzzles' ``CudaProblem`` is the model. A chapter's checks module declares its tasks,
and the notebook calls the checker each declaration gives:

    # gpulab/course/checks/ch00_start_here.py (abridged)
    BRIGHTEN = Task(
        chapter="00", number=1, title="2-D kernel with bounds checks", kind="kernel",
        reference=brighten_reference,                    # marked @gpulab.reference
        make_inputs=lambda size, gen: (torch.rand(size, generator=gen), 0.7, 0.2),
        sizes=Sizes(sim=[(1, 1), (17, 33), (40, 23)], hidden=[(31, 2)], gpu=[(1080, 1920)]),
        launch=lambda kernel, inputs, outputs, size:
            kernel[(ceil(size[1] / 16), ceil(size[0] / 16)), (16, 16)](*inputs[:1], *outputs, *inputs[1:]),
        hints=[Hint(lambda case: case.unwritten_only and case.size[0] != case.size[1],
                    "are rows and columns swapped? x (the first index of cuda.grid(2)) is the column")],
        planted=[Planted("rows and columns swapped", brighten_swapped, expect="swapped"), ...],
        solution="brighten_kernel")                      # its name in the solution notebook
    check_brighten = BRIGHTEN.checker()                  # checks.check_brighten(k, hidden=True)

What every task gets from the engine, without writing it again:

* the ✅/❌ task context of :mod:`gpulab.course.feedback`, with the full message;
* fresh random inputs per trial from a freshly seeded generator (torch's global one is
  left alone), at the declared sizes: the simulator's, plus the hidden ones for the
  instructor, plus large ones on a GPU (:data:`gpulab.runtime.ON_GPU`);
* floating inputs that are views of larger NaN-filled buffers (reading past the end
  gives NaN), checked unchanged afterwards, padding included;
* outputs (``kind="kernel"``) allocated by the engine as windows of larger NaN-filled
  frames: an element never written stays NaN, and a write outside the output is seen
  ("wrote outside the output"); ``output_fill="zeros"`` for accumulators;
* the reference guard (:func:`gpulab.harness.candidate_running`), the task's forbidden
  calls (:func:`gpulab.harness.forbid_calls`) and a refusal of the package's own kernels
  (``own_kernels``);
* ``kind="function"`` with ``kernel_only=True``: the candidate's host code may only
  allocate, view and launch gpulab kernels (a ``TorchFunctionMode`` allow-list refuses
  anything that computes, ``.sum()`` or ``.numpy()`` alike), and what it returns must
  hold data its kernels wrote (a tensor passed to one of its launches, or a copy of one);
* under the simulator with ``no_races=True``: every launch is recorded with
  :mod:`gpulab.simtrace`, and a race, a barrier not every thread reaches, or a shared
  read that a missing ``cuda.syncthreads()`` leaves unordered fails the task, naming the
  threads and the element;
* the numeric comparison of :func:`gpulab.harness.compare`, then the task's hints: each
  :class:`Hint` that applies to the failed :class:`Case` adds a sentence naming the
  likely mistake.

A task also declares at least five :class:`Planted` wrong answers, each with a phrase its
feedback must contain; each chapter's ``tests/chNN_slug/test_chNN_planted.py`` runs them (through
``tests/helpers.py``) and prints a mutation score per task. The real answer is not declared
here (learners can import this package): ``solution`` names the object the chapter's
solution notebook defines, and the test takes it from there.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ... import runtime, simtrace
from ...harness import ForbiddenCallError, ReferenceCalledError, candidate_running, compare, forbid_calls
from ..feedback import TaskFailed, is_kernel, require, require_own_kernel, task

__all__ = ["Task", "Sizes", "Hint", "Planted", "Case", "all_tasks", "tasks_of", "KERNEL", "FUNCTION"]

KERNEL = "kernel"      # the engine allocates outputs and launches the candidate itself
FUNCTION = "function"  # the candidate is called with the inputs and returns the outputs
_KINDS = (KERNEL, FUNCTION)

#: every declared task, by (chapter, number); filled as checks modules are imported
_TASKS: dict[tuple[str, int], "Task"] = {}


# ------------------------------------------------------------------ declarations

@dataclass(frozen=True)
class Sizes:
    """Problem sizes: ``sim`` always, ``hidden`` for the instructor's run, ``gpu`` on a GPU.

    Include 1, sizes that are not multiples of the block, and one case larger than one
    block (or the fixed grid) covers; keep ``sim`` tiny (a simulated thread costs ~1 ms).
    """
    sim: Sequence
    hidden: Sequence = ()
    gpu: Sequence = ()

    def for_run(self, hidden: bool) -> list:
        sizes = list(self.sim) + (list(self.hidden) if hidden else [])
        return sizes + (list(self.gpu) if runtime.ON_GPU else [])


@dataclass(frozen=True)
class Hint:
    """``say`` is added to the feedback when ``when(case)`` is true for a failed case."""
    when: Callable[["Case"], bool]
    say: str

    @staticmethod
    def matches(alternative: Callable, say: str, rtol: float = 1e-4, atol: float = 1e-4) -> "Hint":
        """A hint for a known mistake: the output equals ``alternative(*inputs)`` (and that
        differs from the right answer, so the case can tell them apart)."""
        def when(case):
            wrong = alternative(*case.inputs)
            return case.output_matches(wrong, rtol, atol) and not _same(wrong, case.expected[0], rtol, atol)

        return Hint(when, say)


@dataclass(frozen=True)
class Planted:
    """A plausible wrong answer the task's check must reject with feedback containing
    ``expect`` (case-insensitive). ``simulator_only``: run only under the simulator (it
    reads or writes out of bounds, which can break a real GPU's context, or it is a race
    only the simulator's recorder sees)."""
    name: str
    answer: Any
    expect: str
    simulator_only: bool = False


@dataclass
class Case:
    """One failed trial, as the hints see it."""
    task: "Task"
    size: Any
    inputs: tuple
    outputs: tuple
    expected: tuple
    problem: str = ""
    error: BaseException | None = None
    findings: list = field(default_factory=list)
    frame_touched: bool = False

    @property
    def output(self) -> torch.Tensor | None:
        return self.outputs[0] if self.outputs else None

    @property
    def unwritten(self) -> torch.Tensor:
        """Mask of output 0's elements that are still NaN where a number was expected."""
        out, ref = self.output, self.expected[0]
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape or not out.is_floating_point():
            return torch.zeros(0, dtype=torch.bool)
        return (torch.isnan(out) & ~torch.isnan(ref)).cpu()

    @property
    def unwritten_only(self) -> bool:
        """Every written element is right; some were never written."""
        out, ref = self.output, self.expected[0]
        mask = self.unwritten
        if not mask.any():
            return False
        written = ~mask
        return compare(out.cpu()[written], ref.cpu()[written], self.task.rtol, self.task.atol)[0] is None

    def output_matches(self, alternative, rtol=1e-4, atol=1e-4) -> bool:
        out = self.output
        if not isinstance(out, torch.Tensor) or not isinstance(alternative, torch.Tensor):
            return False
        if out.shape != alternative.shape:
            return False
        return compare(out.cpu().reshape(alternative.shape), alternative.cpu(), rtol, atol)[0] is None


@dataclass
class Task:
    """One graded task. See the module docstring for what the engine does with it.

    ``make_inputs(size, generator)`` returns the input tuple; ``reference(*inputs)`` the
    expected output (or a tuple). ``launch(kernel, inputs, outputs, size)`` launches a
    ``kind="kernel"`` candidate. ``requires`` are checks of the candidate itself, each
    returning a problem sentence or None. ``needs_launch(size)`` says when a function
    task must launch a kernel at all (``size > 1`` for a sum, say).

    Optional, for answers the numeric comparison cannot judge: ``verify(case)`` replaces
    it where more than one output is right (a permutation in any order within a group),
    returning a problem sentence or None; ``adapt(candidate)`` turns the checked candidate
    into what the engine calls (a cache class into a function that replays a trace on it).
    """
    chapter: str
    number: int
    title: str
    kind: str
    reference: Callable
    make_inputs: Callable
    sizes: Sizes
    launch: Callable | None = None
    trials: int = 1
    rtol: float | None = None
    atol: float | None = None
    output_fill: str = "nan"
    pad_inputs: bool = True
    forbidden: Sequence = ()
    forbidden_why: str = "compute it with your own kernel"
    kernel_only: bool = False
    needs_launch: Callable = lambda size: True
    no_races: bool = True
    own_kernels: Sequence = ()
    requires: Sequence[Callable] = ()
    hints: Sequence[Hint] = ()
    planted: Sequence[Planted] = ()
    solution: str | None = None
    candidate_name: str = "your answer"
    verify: Callable | None = None
    adapt: Callable | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"task {self.chapter}.{self.number}: kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind == KERNEL and self.launch is None:
            raise ValueError(f"task {self.chapter}.{self.number}: a kernel task needs launch=...")
        if self.output_fill not in ("nan", "zeros"):
            raise ValueError(f"output_fill must be 'nan' or 'zeros', got {self.output_fill!r}")
        _TASKS[(self.chapter, self.number)] = self

    @property
    def label(self) -> str:
        return f"Task {self.number} ({self.title})"

    def checker(self) -> Callable:
        """The notebook's check function: ``check(candidate, hidden=False)``."""
        def check(candidate, hidden: bool = False) -> None:
            self.run(candidate, hidden=hidden)

        check.__name__ = f"check_task{self.number}"
        check.__doc__ = f"{self.label}: check a candidate answer (hidden=True: the instructor's sizes too)."
        check.task = self
        return check

    # -------------------------------------------------------------- running

    def run(self, candidate, hidden: bool = False) -> None:
        with task(self.label):
            self._check_candidate(candidate)
            call = self.adapt(candidate) if self.adapt is not None else candidate
            gen = torch.Generator().manual_seed(secrets.randbits(63))
            for size in self.sizes.for_run(hidden):
                for trial in range(self.trials):
                    self._run_case(call, size, gen)

    def _check_candidate(self, candidate) -> None:
        if self.kind == KERNEL:
            require(is_kernel(candidate), "pass the kernel itself (a function decorated with @gpulab.kernel)")
            for module in self.own_kernels:
                require_own_kernel(candidate, module)
        else:
            require(callable(candidate), f"pass a callable (your function), got {type(candidate).__name__}")
        for requirement in self.requires:
            problem = requirement(candidate)
            require(problem is None, problem or "")

    def _run_case(self, candidate, size, gen) -> None:
        raw = _as_tuple(self.make_inputs(size, gen))
        inputs, buffers = zip(*(_padded(x, self.pad_inputs) for x in raw)) if raw else ((), ())
        saved = [b.clone() if isinstance(b, torch.Tensor) else b for b in buffers]
        expected = _as_tuple(self.reference(*[x.clone() if isinstance(x, torch.Tensor) else x
                                               for x in inputs]))
        case = Case(self, size, inputs, (), expected)
        where = f"size {_size_text(size)}"
        frames = []
        try:
            with self._guards() as watch:
                if self.kind == KERNEL:
                    framed = [_framed_like(e, self.output_fill) for e in expected]
                    frames = [f for f, _ in framed]
                    case.outputs = tuple(o for _, o in framed)
                    self.launch(candidate, inputs, case.outputs, size)
                else:
                    case.outputs = _as_tuple(candidate(*inputs))
                runtime.synchronize()
        except (TaskFailed, ForbiddenCallError, ReferenceCalledError, NotImplementedError):
            raise  # a cheat or an unfinished stub: the task context says so plainly
        except IndexError as exc:
            case.error = exc
            self._fail(case, f"{where}: an index went out of bounds ({exc})")
        except Exception as exc:
            case.error = exc
            self._fail(case, f"{where}: your code raised {type(exc).__name__}: {exc}")
        case.findings = watch.findings
        if case.findings:
            self._fail(case, f"{where}: {case.findings[0]}")
        if self.kind == FUNCTION and self.kernel_only and self.needs_launch(size):
            require(watch.launches > 0, f"{where}: {self.candidate_name} launched no gpulab kernel "
                    "(decorate your kernels with @gpulab.kernel and launch them)")
            for out in case.outputs:
                require(not isinstance(out, torch.Tensor) or _storage(out) in watch.kernel_data,
                        f"{where}: the tensor returned was not written by your kernels: the answer "
                        "must be computed on the device, not put together on the host")
        for frame, out in zip(frames, case.outputs):
            if _frame_touched(frame, out, self.output_fill):
                case.frame_touched = True
                self._fail(case, f"{where}: the kernel wrote outside the output (an element beyond its "
                                 "end or edge changed): guard every write with a bounds check")
        for k, (x, buf, before) in enumerate(zip(inputs, buffers, saved)):
            if isinstance(buf, torch.Tensor) and not torch.equal(buf.nan_to_num(), before.nan_to_num()):
                self._fail(case, f"{where}: input {k} was modified: read the inputs, write only the output")
        if len(case.outputs) != len(expected):
            self._fail(case, f"{where}: returned {len(case.outputs)} outputs, expected {len(expected)}")
        if self.verify is not None:
            problem = self.verify(case)
            if problem:
                self._fail(case, f"{where}: {problem}")
            return
        for k, (out, ref) in enumerate(zip(case.outputs, expected)):
            if isinstance(out, torch.Tensor) and out.numel() == ref.numel() and out.shape != ref.shape \
                    and out.dim() <= 1 and ref.dim() <= 1:
                out = out.reshape(ref.shape)  # a 1-element answer as shape () or (1,) alike
            problem, _, _ = compare(out, ref, self.rtol, self.atol)
            if problem:
                self._fail(case, f"{where}: output {k}: {problem}" if len(expected) > 1 else f"{where}: {problem}")

    def _fail(self, case: Case, message: str) -> None:
        case.problem = message
        said = []
        for hint in self.hints:
            try:
                applies = hint.when(case)
            except Exception:  # a hint that cannot judge this case says nothing
                applies = False
            if applies and hint.say not in said:
                said.append(hint.say)
        raise TaskFailed("❌ " + message + "".join(f". {s}" for s in said))

    @contextlib.contextmanager
    def _guards(self):
        watch = _Watch()
        with contextlib.ExitStack() as stack:
            stack.enter_context(candidate_running(self.candidate_name))
            if self.forbidden:
                stack.enter_context(forbid_calls(list(self.forbidden), self.forbidden_why))
            if self.kind == FUNCTION:
                stack.enter_context(_watch_launches(watch, self.own_kernels))
                if self.kernel_only:
                    stack.enter_context(_KernelOnlyMode(watch, self.candidate_name))
            rec = stack.enter_context(simtrace.record()) if self.no_races else None
            try:
                yield watch
            finally:
                if rec is not None:
                    watch.findings = rec.findings()


# ------------------------------------------------------------------ the registry

def tasks_of(chapter: str) -> list[Task]:
    return sorted((t for (ch, _), t in _TASKS.items() if ch == chapter), key=lambda t: t.number)


def all_tasks() -> list[Task]:
    """Every task of every registered chapter whose checks module exists (imports them
    first); tasks declared for a chapter the registry does not know are left out."""
    from ..registry import CHAPTERS

    numbers = {ch.number for ch in CHAPTERS}
    for ch in CHAPTERS:
        try:
            importlib.import_module(ch.checks_module)
        except ModuleNotFoundError as exc:
            if exc.name != ch.checks_module:  # the module exists but is broken: say so
                raise
    return sorted((t for t in _TASKS.values() if t.chapter in numbers), key=lambda t: (t.chapter, t.number))


# ------------------------------------------------------------------ inputs and outputs

_PAD = 2


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _size_text(size) -> str:
    if isinstance(size, tuple):
        return "x".join(str(s) for s in size)
    return str(size)


def _padded(x, pad_inputs: bool):
    """(view the candidate gets, whole buffer): a floating tensor followed by NaN."""
    if not isinstance(x, torch.Tensor):
        return x, x
    x = x.to(runtime.device)
    if not pad_inputs or not x.is_floating_point() or x.dim() == 0:
        return x, x
    buf = torch.full(tuple(s + _PAD for s in x.shape), float("nan"), dtype=x.dtype, device=x.device)
    view = buf[tuple(slice(0, s) for s in x.shape)]
    view.copy_(x)
    return view, buf


def _framed_like(ref: torch.Tensor, fill: str):
    """(frame, output window) for an output shaped like ``ref``, the frame poisoned."""
    shape = tuple(ref.shape) or (1,)
    frame = torch.full(tuple(s + 2 * _PAD for s in shape), float("nan"), dtype=_out_dtype(ref),
                       device=runtime.device)
    window = frame[tuple(slice(_PAD, _PAD + s) for s in shape)]
    if fill == "zeros":
        window.zero_()
    return frame, window.reshape(ref.shape) if ref.dim() == 0 else window


def _out_dtype(ref: torch.Tensor) -> torch.dtype:
    return ref.dtype if ref.is_floating_point() else torch.float32


def _frame_touched(frame: torch.Tensor, window: torch.Tensor, fill: str) -> bool:
    inner = torch.zeros_like(frame, dtype=torch.bool)
    inner[tuple(slice(_PAD, _PAD + s) for s in window.shape)] = True
    return bool((~torch.isnan(frame) & ~inner).any())


def _same(a, b, rtol, atol) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and compare(a.cpu(), b.cpu(), rtol, atol)[0] is None)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


# ------------------------------------------------------------------ "the kernels compute it"

class _Watch:
    """What the candidate's launches touched, gathered while it runs."""

    def __init__(self):
        self.launches = 0
        self.kernel_data: set[int] = set()  # storages passed to a launch, or copied from one
        self.findings: list = []
        self.paused = 0


@contextlib.contextmanager
def _watch_launches(watch: _Watch, own_kernels):
    """Count the candidate's gpulab launches and note which tensors they received."""
    from ...launch import Kernel

    original = Kernel.launch

    def watched(kernel, grid, block, shared, args, stream=None):
        watch.paused += 1  # the launcher's own torch calls are not the candidate's
        try:
            for module in own_kernels:
                require_own_kernel(kernel, module)
            watch.launches += 1
            watch.kernel_data.update(_storage(a) for a in args if isinstance(a, torch.Tensor))
            return original(kernel, grid, block, shared, args, stream)
        finally:
            watch.paused -= 1

    Kernel.launch = watched
    try:
        yield
    finally:
        Kernel.launch = original


# allocation, views, copies and metadata: what host code needs to set up kernels
_ALLOWED = {
    "torch.empty", "torch.zeros", "torch.ones", "torch.full", "torch.empty_like", "torch.zeros_like",
    "torch.full_like", "torch.ones_like", "torch.empty_strided", "torch.Tensor.new_empty",
    "torch.Tensor.new_zeros", "torch.Tensor.new_full", "torch.Tensor.new_ones", "torch.Tensor.zero_",
    "torch.Tensor.fill_",
    "torch.Tensor.view", "torch.Tensor.reshape", "torch.Tensor.__getitem__", "torch.Tensor.__setitem__",
    "torch.Tensor.unsqueeze", "torch.Tensor.squeeze", "torch.Tensor.flatten", "torch.Tensor.narrow",
    "torch.Tensor.contiguous", "torch.Tensor.clone", "torch.Tensor.detach", "torch.Tensor.copy_",
    "torch.Tensor.to", "torch.Tensor.float", "torch.Tensor.t", "torch.Tensor.transpose",
    "torch.Tensor.permute", "torch.Tensor.view_as", "torch.Tensor.reshape_as", "torch.reshape",
    "torch.Tensor.numel", "torch.Tensor.size", "torch.Tensor.dim", "torch.Tensor.stride",
    "torch.Tensor.element_size", "torch.Tensor.data_ptr", "torch.Tensor.is_contiguous",
    "torch.Tensor.storage_offset", "torch.Tensor.untyped_storage", "torch.Tensor.__len__",
    "torch.Tensor.__repr__", "torch.Tensor.__format__", "torch.Tensor.__str__",
}
_ALLOWED_PROPERTIES = {"shape", "device", "dtype", "ndim", "is_cuda", "requires_grad", "layout", "T",
                       "data", "grad_fn", "is_leaf", "names"}
#: results of these hold the same data as their input: a copy of kernel output is kernel output
_DERIVED = {"torch.Tensor.view", "torch.Tensor.reshape", "torch.Tensor.__getitem__", "torch.Tensor.clone",
            "torch.Tensor.contiguous", "torch.Tensor.detach", "torch.Tensor.to", "torch.Tensor.float",
            "torch.Tensor.flatten", "torch.Tensor.squeeze", "torch.Tensor.unsqueeze", "torch.Tensor.narrow",
            "torch.reshape", "torch.Tensor.view_as", "torch.Tensor.reshape_as"}


class _KernelOnlyMode(torch.overrides.TorchFunctionMode):
    """Refuses every torch operation of the candidate's host code that could compute."""

    def __init__(self, watch: _Watch, who: str):
        super().__init__()
        self.watch, self.who = watch, who

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = torch.overrides.resolve_name(func) or getattr(func, "__qualname__", repr(func))
        if not self.watch.paused and not _allowed(name):
            raise ForbiddenCallError(
                f"{self.who} computed with {name.removesuffix('.__get__')} on the host: only allocate, "
                "view or copy tensors there and let your kernels do the work (no torch math, no "
                ".item(), .tolist() or .numpy())")
        result = func(*args, **kwargs)
        if name in _DERIVED and args and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor):
            if _storage(args[0]) in self.watch.kernel_data:
                self.watch.kernel_data.add(_storage(result))
        return result


def _allowed(name: str) -> bool:
    if name in _ALLOWED:
        return True
    if name.startswith("torch.Tensor.") and name.endswith(".__get__"):
        return name.split(".")[2] in _ALLOWED_PROPERTIES
    return False


def ceil_div(n: int, d: int) -> int:
    """Blocks of ``d`` needed for ``n`` items (at least one)."""
    return max(1, math.ceil(n / d))
