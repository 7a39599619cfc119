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
* under the simulator with ``no_races=True`` (the default; the task requires "no race, no
  missing barrier, no out-of-bounds"): every launch is traced with :mod:`gpulab.simtrace`,
  and an index past the end of an array or a negative one, a barrier not every thread
  reaches, a shared read that a missing ``cuda.syncthreads()`` leaves unordered, or a race
  (two threads writing one element without an atomic) fails the task, naming the thread,
  the block, the array and the index ("threads (3,0,0) and (35,0,0) of block (0,0,0) both
  wrote out[3] without an atomic");
* the numeric comparison of :func:`gpulab.harness.compare`, then the task's hints: each
  :class:`Hint` that applies to the failed :class:`Case` adds a sentence naming the
  likely mistake;
* a checker the candidate cannot read or patch while it runs (a simulated kernel is
  Python, so it could): the expected output is computed only after the candidate ran,
  from a copy of the inputs taken before, so no frame holds it meanwhile; the engine's
  functions look names up in a private copy of this module's namespace (``engine.compare
  = ...`` reaches nothing the engine calls); and after every candidate run the functions
  and classes of the engine, :mod:`gpulab.harness`, :mod:`gpulab.course.feedback` and
  :mod:`gpulab.simtrace` are compared with their state at import: a change is put back
  and fails the task ("changed the checker (gpulab.harness.compare)").

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
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ... import harness, runtime, simtrace
from ...harness import ForbiddenCallError, ReferenceCalledError, candidate_running, compare, forbid_calls
from ...runtime import synchronize
from ...simtrace import record as record_races
from .. import feedback
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
    no_races: bool = True   # under the simulator: no race, no missing barrier, no out-of-bounds
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

    def run(self, candidate, hidden: bool = False, recorder: bool = True) -> None:
        """Check ``candidate`` at every size; ``recorder=False`` leaves the simulator's race
        recorder off, as on a GPU (the planted-answer tests check what a GPU would say)."""
        with task(self.label):
            _require_checker_intact(_checker_changes(), "the checker was changed before it ran")
            declared = _declaration_of(self)
            self._check_candidate(candidate)
            call = self.adapt(candidate) if self.adapt is not None else candidate
            self._require_unchanged(declared, "")  # a source's top-level code has run by now
            gen = torch.Generator().manual_seed(secrets.randbits(63))
            for size in self.sizes.for_run(hidden):
                for trial in range(self.trials):
                    self._run_case(call, size, gen, declared, recorder)

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

    def _run_case(self, candidate, size, gen, declared, recorder) -> None:
        raw = _as_tuple(self.make_inputs(size, gen))
        inputs, buffers = zip(*(_padded(x, self.pad_inputs) for x in raw)) if raw else ((), ())
        saved = [_copy(b) for b in buffers]
        # The reference runs on its own copy only after the candidate ran: while the candidate
        # runs, no frame holds the expected output (a simulated kernel is Python: it could
        # walk the frames and copy it).
        pristine = [_copy(x) for x in inputs]
        case = Case(self, size, inputs, (), ())
        where = f"size {_size_text(size)}"
        frames = []
        if self.kind == KERNEL:
            framed = [_framed_like(spec, self.output_fill) for spec in self._output_specs(pristine)]
            frames = [f for f, _ in framed]
            case.outputs = tuple(o for _, o in framed)
        watch, stopped = _Watch(), None
        with contextlib.ExitStack() as guards:
            rec = self._enter_guards(guards, watch, recorder)
            try:
                if self.kind == KERNEL:
                    self.launch(candidate, inputs, case.outputs, size)
                else:
                    case.outputs = _as_tuple(candidate(*inputs))
                synchronize()
            except (TaskFailed, ForbiddenCallError, ReferenceCalledError, NotImplementedError) as exc:
                stopped = exc  # a cheat or an unfinished stub: the task context says so plainly
            except Exception as exc:
                case.error = exc
            findings = rec.findings() if rec is not None else []
        self._require_unchanged(declared, f"{where}: ")
        if stopped is not None:
            raise stopped
        case.expected = expected = _as_tuple(self.reference(*pristine))
        if isinstance(case.error, IndexError):
            # the tracer names the thread, the array and the index; the simulator's own
            # message (tid=[...] ctaid=[...]: index 20 is out of bounds ...) names no array
            named = [f for f in findings if f.kind == "out of bounds"]
            self._fail(case, f"{where}: an index went out of bounds"
                             + (f": {named[0]}" if named else f" ({case.error})"))
        if case.error is not None:
            self._fail(case, f"{where}: your code raised {type(case.error).__name__}: {case.error}")
        for out in case.outputs:
            # a subclass's __torch_function__ would see the reference it is compared with
            require(not isinstance(out, torch.Tensor) or type(out) is torch.Tensor,
                    f"{where}: {self.candidate_name} returned a {type(out).__name__}, a tensor subclass: "
                    "return a plain torch.Tensor")
        case.findings = findings
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

    def _output_specs(self, inputs) -> tuple:
        """The reference's outputs as meta tensors (shape and dtype, no values): what the
        engine allocates for a kernel before it runs. Found on the meta device where the
        reference allows it; one that needs values (``.item()``, NumPy) runs on a copy of
        the inputs and only the shapes are kept."""
        on_meta = [x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs]
        try:
            specs = _as_tuple(self.reference(*on_meta))
            if all(isinstance(e, torch.Tensor) and e.is_meta for e in specs):
                return specs
        except Exception:  # noqa: BLE001 (any failure on meta: fall back to real values)
            pass
        return tuple(e.to("meta") for e in _as_tuple(self.reference(*[_copy(x) for x in inputs])))

    def _require_unchanged(self, declared: dict, where: str) -> None:
        """Fail when the candidate changed the checker's code or this task's declaration
        (both are put back first, so the next check runs on the originals)."""
        changed = _checker_changes() + _declaration_changes(self, declared)
        _require_checker_intact(changed, f"{where}{self.candidate_name} changed the checker")

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

    def _enter_guards(self, guards: contextlib.ExitStack, watch: "_Watch", recorder: bool):
        """Enter the watches on the candidate's run into ``guards``; returns the race
        recording, or None."""
        guards.enter_context(candidate_running(self.candidate_name))
        if self.forbidden:
            guards.enter_context(forbid_calls(list(self.forbidden), self.forbidden_why))
        if self.kind == FUNCTION:
            guards.enter_context(_LaunchWatch(watch, self.own_kernels))
            if self.kernel_only:
                guards.enter_context(forbid_calls(_raw_routes(), _RAW_ROUTES_WHY))
                guards.enter_context(_KernelOnlyMode(watch, self.candidate_name))
        return guards.enter_context(record_races()) if self.no_races and recorder else None


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


def _copy(x):
    return x.clone() if isinstance(x, torch.Tensor) else x


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


class _LaunchWatch:
    """Inside the block, count the candidate's gpulab launches and note which tensors they
    received (``Kernel.launch`` is wrapped, and restored on exit)."""

    def __init__(self, watch: _Watch, own_kernels):
        self.watch, self.own_kernels = watch, own_kernels

    def __enter__(self):
        from ...launch import Kernel

        watch, own_kernels = self.watch, self.own_kernels
        self.original = original = Kernel.launch

        def watched(kernel, grid, block, shared, args, stream=None):
            watch.paused += 1  # the launcher's own torch calls (data_ptr, ...) are not the candidate's
            try:
                for module in own_kernels:
                    require_own_kernel(kernel, module)
                watch.launches += 1
                watch.kernel_data.update(_storage(a) for a in args if isinstance(a, torch.Tensor))
                return original(kernel, grid, block, shared, args, stream)
            finally:
                watch.paused -= 1

        Kernel.launch = watched
        return self

    def __exit__(self, *exc):
        from ...launch import Kernel

        Kernel.launch = self.original
        return False


# Allocation, views, copies and metadata: what host code needs to set up kernels. No raw
# addresses (data_ptr, untyped_storage): with ctypes they read and write a tensor's memory
# past this watch (the launcher's own calls to them run paused, see _LaunchWatch).
_ALLOWED = frozenset({
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
    "torch.Tensor.element_size", "torch.Tensor.is_contiguous", "torch.Tensor.storage_offset",
    "torch.Tensor.__len__", "torch.Tensor.__repr__", "torch.Tensor.__format__", "torch.Tensor.__str__",
})
#: what hands out a tensor's memory itself, refused with its own message
_RAW_MEMORY = frozenset({
    "torch.Tensor.data_ptr", "torch.Tensor.untyped_storage", "torch.Tensor.storage",
    "torch.Tensor._typed_storage", "torch.Tensor.__array__", "torch.Tensor.numpy",
    "torch.Tensor.__dlpack__", "torch.Tensor.__cuda_array_interface__.__get__"})
_ALLOWED_PROPERTIES = frozenset({"shape", "device", "dtype", "ndim", "is_cuda", "requires_grad", "layout",
                                 "T", "data", "grad_fn", "is_leaf", "names"})
#: results of these hold the same data as their input: a copy of kernel output is kernel output
_DERIVED = frozenset({
    "torch.Tensor.view", "torch.Tensor.reshape", "torch.Tensor.__getitem__", "torch.Tensor.clone",
    "torch.Tensor.contiguous", "torch.Tensor.detach", "torch.Tensor.to", "torch.Tensor.float",
    "torch.Tensor.flatten", "torch.Tensor.squeeze", "torch.Tensor.unsqueeze", "torch.Tensor.narrow",
    "torch.reshape", "torch.Tensor.view_as", "torch.Tensor.reshape_as"})


def _raw_routes() -> list:
    """Routes around the allow-list that the TorchFunctionMode does not see: DLPack export
    (a raw pointer to the memory) and switching torch-function handling off altogether.
    Refused like forbidden calls while a kernel_only candidate runs."""
    routes = [(torch.utils.dlpack, "to_dlpack"), (torch, "to_dlpack"), (torch._C, "_to_dlpack"),
              (torch._C, "DisableTorchFunction")]
    return [(obj, name) for obj, name in routes if hasattr(obj, name)]


_RAW_ROUTES_WHY = ("host code may only allocate, view, copy and launch: no raw memory access, and the "
                   "watch on it stays on")


class _KernelOnlyMode(torch.overrides.TorchFunctionMode):
    """Refuses every torch operation of the candidate's host code that could compute."""

    def __init__(self, watch: _Watch, who: str):
        super().__init__()
        self.watch, self.who = watch, who

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = torch.overrides.resolve_name(func) or getattr(func, "__qualname__", repr(func))
        if not self.watch.paused and name in _RAW_MEMORY:
            raise ForbiddenCallError(
                f"{self.who} reached a tensor's raw memory with {name.removesuffix('.__get__')} on the "
                "host (ctypes, NumPy or DLPack would then compute past this watch): only allocate, view "
                "or copy tensors there and let your kernels do the work")
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



# ------------------------------------------------------------------ the checker's own code
# A candidate runs in the checker's process, and under the simulator even its kernels are
# Python: it could rebind what judges it (``engine.compare = lambda *a, **k: (None, 0, 0)``).
# Two defences. The engine's functions look names up in a private copy of this module's
# namespace (see _seal at the end), so rebinding a module attribute reaches nothing they
# call. And after every candidate run, the functions and classes of this module and of the
# modules below are compared with what they were at import: a change is put back (so the
# next check runs on the originals) and fails the task.

#: the modules whose code judges an answer, besides this one
_CHECKER_MODULES = (harness, feedback, simtrace)
#: names of this module left out: the registry (refilled on a reload), and the private
#: namespace, checked entry by entry as the engine sees it
_NOT_CHECKED = frozenset({"_TASKS", "_PRIVATE"})
_GONE = object()  # a name that was deleted, or an empty closure cell
_BUILTIN_NAMES = frozenset(dir(__import__("builtins")))
#: besides callables, what a checked name may hold that matters (a module: ``harness.torch``)
_CHECKED_KINDS = (dict, set, property, staticmethod, classmethod, types.ModuleType)


def _functions_in(value, depth: int = 0) -> list:
    """``value``'s Python functions (a method's, a property's), and those in their closure
    cells (what a contextmanager wraps)."""
    if isinstance(value, (staticmethod, classmethod)):
        return _functions_in(value.__func__, depth)
    if isinstance(value, property):
        return [f for g in (value.fget, value.fset, value.fdel) for f in _functions_in(g, depth)]
    if not isinstance(value, types.FunctionType):
        return []
    found = [value]
    for content in _cell_contents(value):
        if depth < 2:
            found += _functions_in(content, depth + 1)
    return found


def _cell_contents(f: types.FunctionType) -> list:
    contents = []
    for cell in f.__closure__ or ():
        try:
            contents.append(cell.cell_contents)
        except ValueError:
            contents.append(_GONE)
    return contents


def _state(value) -> list:
    """What can be assigned in place on ``value``'s functions (``f.__code__ = g.__code__``):
    for each one, (function, code, defaults, keyword defaults, cell contents)."""
    return [(f, f.__code__, f.__defaults__, dict(f.__kwdefaults__ or {}), _cell_contents(f))
            for f in _functions_in(value)]


def _same_state(now: list, then: list) -> bool:
    def same(a, b):
        return (a[0] is b[0] and a[1] is b[1] and a[2] is b[2] and a[3].keys() == b[3].keys()
                and all(a[3][k] is b[3][k] for k in a[3]) and len(a[4]) == len(b[4])
                and all(x is y for x, y in zip(a[4], b[4])))

    return len(now) == len(then) and all(same(a, b) for a, b in zip(now, then))


def _put_back_state(state: list) -> None:
    for f, code, defaults, kwdefaults, cells in state:
        f.__code__, f.__defaults__, f.__kwdefaults__ = code, defaults, dict(kwdefaults) or None
        for cell, content in zip(f.__closure__ or (), cells):
            if content is not _GONE:
                cell.cell_contents = content


class _Record:
    """One checked name: where it lives, its value and that value's state at import; for
    a dict or a set also its entries (added entries are fine, changed or removed are not)."""

    def __init__(self, label: str, owner, name: str):
        self.label, self.owner, self.name = label, owner, name
        self.value = vars(owner)[name]
        self.state = _state(self.value)
        self.entries = dict(self.value) if isinstance(self.value, dict) else None
        self.members = set(self.value) if isinstance(self.value, set) else None

    def changed(self) -> bool:
        value = vars(self.owner).get(self.name, _GONE)
        if value is not self.value or not _same_state(_state(value), self.state):
            return True
        if self.entries is not None and any(value.get(k, _GONE) is not v
                                            for k, v in self.entries.items()):
            return True
        return self.members is not None and not self.members <= value

    def put_back(self) -> None:
        setattr(self.owner, self.name, self.value)
        _put_back_state(self.state)
        if self.entries is not None:
            self.value.update(self.entries)
        if self.members is not None:
            self.value.update(self.members)


class _Snapshot:
    """The checker's code at import: every function, class (and each class attribute),
    dict and set at the top level of the checked modules, plus the names each namespace
    had (a name added later may shadow a builtin, or override a method)."""

    def __init__(self, modules, private: dict):
        self.records, self.names = [], []
        for module in modules:
            self._add(module.__name__, module, skip=_NOT_CHECKED if module.__name__ == __name__ else ())
            for value in list(vars(module).values()):
                if isinstance(value, type) and value.__module__ == module.__name__:
                    self._add(f"{module.__name__}.{value.__qualname__}", value, watch_all_names=True)
        self.private, self.private_saved = private, dict(private)  # the engine's own (see _seal)

    def _add(self, label: str, owner, skip=(), watch_all_names: bool = False) -> None:
        for name, value in list(vars(owner).items()):
            if isinstance(owner, types.ModuleType) and name.startswith("__"):
                continue  # a module's own entries (its __builtins__ changes under IPython)
            if name not in skip and (callable(value) or isinstance(value, _CHECKED_KINDS)):
                self.records.append(_Record(f"{label}.{name}", owner, name))
        self.names.append((label, owner, frozenset(vars(owner)), watch_all_names))

    def changes(self) -> list[str]:
        """The names changed since import, each put back."""
        changed = []
        for record in self.records:
            if record.changed():
                changed.append(record.label)
                record.put_back()
        for label, owner, names, watch_all_names in self.names:
            for name in set(vars(owner)) - names:
                if watch_all_names or name in _BUILTIN_NAMES:
                    changed.append(f"{label}.{name}")
                    delattr(owner, name)
        for name, value in self.private_saved.items():
            if name not in _NOT_CHECKED and self.private.get(name, _GONE) is not value:
                changed.append(f"{__name__}.{name} (as the engine sees it)")
                self.private[name] = value
        for name in set(self.private) - set(self.private_saved):
            changed.append(f"{__name__}.{name} (as the engine sees it)")
            del self.private[name]
        return changed


def _checker_changes() -> list[str]:
    return _SNAPSHOT.changes()


def _require_checker_intact(changed: list[str], who_did_it: str) -> None:
    named = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
    require(not changed, f"{who_did_it} ({named}): an answer must compute, not patch the code "
            "that judges it (it has been put back)")


def _declaration_of(t: Task) -> dict:
    """The task's fields as the run starts, lists also by content (the sizes, the hints)."""
    return {name: (value, tuple(value) if isinstance(value, list) else None)
            for name, value in vars(t).items()}


def _declaration_changes(t: Task, declared: dict) -> list[str]:
    changed = []
    for name, (value, items) in declared.items():
        now = vars(t).get(name, _GONE)
        if now is not value or (items is not None and tuple(now) != items):
            changed.append(f"{t.label}'s {name}")
            setattr(t, name, value)
            if items is not None:
                value[:] = items
    return changed


def _seal(namespace: dict) -> dict:
    """Give this module's functions and methods a private copy of its namespace as their
    globals, so ``engine.compare = ...`` (a write to the module's own namespace) changes
    nothing they call. Returns the private namespace."""
    private = dict(namespace)

    def sealed(f: types.FunctionType) -> types.FunctionType:
        g = types.FunctionType(f.__code__, private, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__, g.__qualname__, g.__doc__ = f.__kwdefaults__, f.__qualname__, f.__doc__
        g.__module__, g.__annotations__ = f.__module__, f.__annotations__
        g.__dict__.update(f.__dict__)
        return g

    def sealed_member(member):
        if isinstance(member, types.FunctionType) and member.__globals__ is namespace:
            return sealed(member)
        if isinstance(member, (staticmethod, classmethod)) \
                and getattr(member.__func__, "__globals__", None) is namespace:
            return type(member)(sealed(member.__func__))
        if isinstance(member, property):
            fs = [sealed(f) if isinstance(f, types.FunctionType) and f.__globals__ is namespace else f
                  for f in (member.fget, member.fset, member.fdel)]
            return property(*fs, member.__doc__)
        return member

    for name, value in list(namespace.items()):
        if isinstance(value, type) and value.__module__ == namespace["__name__"]:
            for attr, member in list(vars(value).items()):
                replacement = sealed_member(member)
                if replacement is not member:
                    setattr(value, attr, replacement)
        else:
            replacement = sealed_member(value)
            if replacement is not value:
                private[name] = namespace[name] = replacement
    return private


_PRIVATE = _seal(globals())
_SNAPSHOT = _Snapshot([sys.modules[__name__], *_CHECKER_MODULES], _PRIVATE)
_PRIVATE["_SNAPSHOT"] = _SNAPSHOT      # what the sealed functions call
_SNAPSHOT.private_saved = dict(_PRIVATE)
