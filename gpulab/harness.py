"""Checking and timing kernels: the two questions every chapter asks.

``check`` answers *is it right?*: fresh random inputs every trial, sizes that are not
multiples of the block, outputs poisoned with NaN before the run (an element the kernel
forgot to write stays NaN and is caught), tolerances by dtype, inputs checked unchanged,
and a report that says how large the error is, where, and how many elements are wrong.

``bench`` answers *how fast?*: on a GPU, warm-up then CUDA events around each run and the
median with its spread; on a CPU, honest wall time, labelled as such.

``roofline`` answers *how fast could it be?*: bytes moved over the measured copy
bandwidth, operations over the measured FP32 peak (see :mod:`gpulab.peaks`).

References are marked with :func:`reference`. While ``check`` runs a candidate, calling
a marked reference raises :class:`ReferenceCalledError`: a kernel that "computes" by
calling the answer fails.
"""
from __future__ import annotations

import contextlib
import functools
import math
import secrets
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import runtime

__all__ = [
    "check", "CheckReport", "CheckFailed", "tolerance", "bench", "Timing", "reference",
    "ReferenceCalledError", "candidate_running", "forbid_calls", "ForbiddenCallError", "mark_answers",
    "code_of",
]


# ------------------------------------------------------------------ tolerances

# (rtol, atol) by dtype: float32 kernels that sum in a different order than torch land
# near 1e-6 relative; reductions over many terms need the looser end.
_TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used for outputs of ``dtype``; integers and bools must match exactly."""
    return _TOLERANCES.get(dtype, (0.0, 0.0))


# ------------------------------------------------------------- reference guard

# Process-wide, not per thread or context: the simulator runs each CUDA thread as a Python
# thread, and a candidate may start threads of its own; all of them must see the guard.
_running: list[str] = []
_lock = threading.Lock()
#: code objects of every function marked with @reference
_reference_code: set = set()


class ReferenceCalledError(AssertionError):
    """A candidate called a reference implementation instead of computing."""


def _refuse(who: str, fn_name: str):
    raise ReferenceCalledError(f"{who} called the reference {fn_name} instead of computing the "
                               "answer itself")


def reference(fn: Callable) -> Callable:
    """Mark ``fn`` as a reference answer: calling it while a candidate runs is an error.

    The wrapper refuses plain calls with a clear message; calls that go around it (through
    ``__wrapped__``, say) are caught by a trace hook that :func:`candidate_running` sets
    up, which watches for ``fn``'s code being run.
    """
    _reference_code.add(fn.__code__)

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if _running:
            _refuse(_running[-1], f"{fn.__module__}.{fn.__qualname__}")
        return fn(*args, **kwargs)

    guarded.is_reference = True
    return guarded


def code_of(fn):
    """The code object of a function, or of the Python function behind a kernel."""
    return getattr(getattr(fn, "py_func", fn), "__code__", None)


def mark_answers(*functions) -> None:
    """Treat existing functions or kernels (the course package's own solutions to a task)
    like references: a candidate that calls them fails. Kernels are caught where their
    Python code runs (the simulator); host functions everywhere."""
    for fn in functions:
        _reference_code.add(code_of(fn))


def _trace_reference_calls(frame, event, arg):
    """A trace function: fails the call when a reference's own code starts running."""
    if event == "call" and frame.f_code in _reference_code and _running:
        _refuse(_running[-1], frame.f_code.co_qualname if hasattr(frame.f_code, "co_qualname")
                else frame.f_code.co_name)
    return None  # no line-by-line tracing: only calls are watched


@contextlib.contextmanager
def candidate_running(name: str):
    """Inside this block, calls to functions marked with :func:`reference` fail, in every
    thread (the simulator's included)."""
    with _lock:
        _running.append(name)
    previous = sys.gettrace(), getattr(threading, "gettrace", lambda: None)()
    sys.settrace(_trace_reference_calls)
    threading.settrace(_trace_reference_calls)
    try:
        yield
    finally:
        sys.settrace(previous[0])
        threading.settrace(previous[1])
        with _lock:
            _running.remove(name)


class ForbiddenCallError(AssertionError):
    """A candidate used a library routine that the task asked it to compute itself."""


@contextlib.contextmanager
def forbid_calls(targets, why: str = "compute it with your own kernel"):
    """Make ``obj.attr`` raise :class:`ForbiddenCallError` inside the block.

    ``targets`` is a list of ``(obj, "attr")`` pairs, e.g. ``[(torch, "sum"),
    (torch.Tensor, "sum")]``; the originals are restored on exit, also after an error.
    """
    saved = []
    try:
        for obj, attr in targets:
            original = getattr(obj, attr)
            saved.append((obj, attr, original))
            label = f"{getattr(obj, '__name__', type(obj).__name__)}.{attr}"

            def blocked(*args, _label=label, **kwargs):
                raise ForbiddenCallError(f"the answer called {_label}: {why}")

            setattr(obj, attr, blocked)
        yield
    finally:
        for obj, attr, original in reversed(saved):
            setattr(obj, attr, original)


# ------------------------------------------------------------------------- check

class CheckFailed(AssertionError):
    """Raised by :func:`check` when a candidate is wrong; the message is the report."""


@dataclass
class Mismatch:
    size: object
    trial: int
    output: int
    message: str


@dataclass
class CheckReport:
    name: str
    cases: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.mismatches

    def __str__(self) -> str:
        if self.ok:
            return (f"✅ {self.name}: {self.cases} random cases match the reference "
                    f"(max abs error {self.max_abs_error:.2e}, max rel error {self.max_rel_error:.2e})")
        if self.cases == 0:
            return f"❌ {self.name}: no case was run"
        first = self.mismatches[0]
        more = len(self.mismatches) - 1
        wrong_cases = len({(m.size, m.trial) for m in self.mismatches})
        return (f"❌ {self.name}: {wrong_cases} of {self.cases} cases wrong. "
                f"First, size {first.size}, trial {first.trial}, output {first.output}: "
                f"{first.message}" + (f" (and {more} more problems)" if more else ""))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def compare(out: torch.Tensor, ref: torch.Tensor, rtol=None, atol=None) -> tuple[str | None, float, float]:
    """Compare one output with its reference: (problem or None, max abs err, max rel err)."""
    if not isinstance(out, torch.Tensor):
        return f"output is a {type(out).__name__}, expected a tensor", math.inf, math.inf
    if out.shape != ref.shape:
        return f"shape {tuple(out.shape)} but the reference has {tuple(ref.shape)}", math.inf, math.inf
    d_rtol, d_atol = tolerance(out.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    o = out.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    if o.numel() == 0:
        return None, 0.0, 0.0
    unwritten = torch.isnan(o) & ~torch.isnan(r)
    diff = (o - r).abs()
    # equal values (infinities included: inf - inf is NaN) and NaN where NaN is expected
    same = (o == r) | (torch.isnan(o) & torch.isnan(r))
    diff = torch.where(same, torch.zeros_like(diff), diff)
    bad = (unwritten | (diff > atol + rtol * r.abs()) | (torch.isnan(diff) & ~unwritten)
           | (torch.isinf(r) & ~same))  # an infinite tolerance must not excuse a wrong infinity
    finite = torch.nan_to_num(diff, nan=math.inf)
    max_abs = float(finite.max())
    max_rel = float((finite / r.abs().clamp_min(1e-30)).max())
    n_bad = int(bad.sum())
    if n_bad == 0:
        return None, max_abs, max_rel
    flat = int(torch.nonzero(bad.flatten())[0])
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), o.shape)) if o.dim() else ()
    n_unwritten = int(unwritten.sum())
    msg = (f"{n_bad} of {o.numel()} elements wrong; first at index {where}: "
           f"got {o.flatten()[flat].item():.6g}, expected {r.flatten()[flat].item():.6g}")
    if n_unwritten:
        msg += f"; {n_unwritten} elements were never written (still NaN)"
    msg += f" (rtol={rtol:g}, atol={atol:g})"
    return msg, max_abs, max_rel


def _poisoned_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t, device=runtime.device)
    if out.is_floating_point():
        out.fill_(float("nan"))
    elif out.dtype == torch.bool:
        out.fill_(True)
    else:
        out.fill_(torch.iinfo(out.dtype).min)  # a sentinel no plausible answer holds
    return out


def _require_callable(caller: str, role: str, value) -> None:
    """A clear error for the usual slip, passing what a function returned instead of the
    function (``check(f(), ...)``), before anything is run or timed."""
    if not callable(value):
        raise TypeError(f"{caller}: {role} must be callable (a function or a kernel), got "
                        f"{type(value).__name__} {value!r:.60}; pass the function itself, "
                        f"e.g. {caller}(my_fn, ...) and not {caller}(my_fn(), ...)")


def check(candidate: Callable, reference_fn: Callable, make_inputs: Callable,
          sizes: Sequence = (1, 7, 100, 1000), trials: int = 2, *, writes_outputs: bool = True,
          rtol: float | None = None, atol: float | None = None, name: str | None = None,
          seed: int | None = None, raise_on_fail: bool = True, verbose: bool = False) -> CheckReport:
    """Compare ``candidate`` with ``reference_fn`` on fresh random inputs.

    ``make_inputs(size, generator)`` returns a tuple of input tensors (on any device; they
    are moved to :data:`gpulab.device`). ``reference_fn(*inputs)`` returns the expected
    output tensor (or a tuple of them). With ``writes_outputs=True`` the candidate is
    called as ``candidate(*inputs, *outputs)`` with outputs allocated by ``check`` and
    filled with NaN (or an integer sentinel), like a kernel launch; with ``False`` it is
    called as ``candidate(*inputs)`` and returns its outputs.

    Each ``size`` runs ``trials`` times with new random inputs. Inputs must come back
    unchanged. A candidate that calls a function marked with :func:`reference` raises
    :class:`ReferenceCalledError`; one that raises ``NotImplementedError`` (an exercise
    stub) has it passed through. Returns a :class:`CheckReport`; raises :class:`CheckFailed` if any case is
    wrong and ``raise_on_fail`` (the default, so notebooks stop at a wrong answer).
    """
    for role, value in (("candidate", candidate), ("reference_fn", reference_fn), ("make_inputs", make_inputs)):
        _require_callable("check", role, value)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"check: trials must be a positive int, got {trials!r}")
    name = name or getattr(candidate, "__name__", "candidate")
    report = CheckReport(name)
    gen = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
    for size in sizes:
        for trial in range(trials):
            inputs = tuple(x.to(runtime.device) if isinstance(x, torch.Tensor) else x
                           for x in _as_tuple(make_inputs(size, gen)))
            saved = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
            expected = _as_tuple(reference_fn(*saved))
            report.cases += 1
            try:
                with candidate_running(name):
                    if writes_outputs:
                        outs = tuple(_poisoned_like(e) for e in expected)
                        candidate(*inputs, *outs)
                    else:
                        outs = _as_tuple(candidate(*inputs))
                runtime.synchronize()
            except (ReferenceCalledError, ForbiddenCallError, NotImplementedError):
                raise  # a cheat or an unfinished stub: say so plainly, not as a wrong case
            except Exception as exc:  # a crash is a failed case, reported with its cause
                report.mismatches.append(Mismatch(size, trial, 0, f"raised {type(exc).__name__}: {exc}"))
                continue
            problems = []
            if len(outs) != len(expected):
                problems.append((0, f"returned {len(outs)} outputs, expected {len(expected)}"))
            for k, (o, e) in enumerate(zip(outs, expected)):
                msg, max_abs, max_rel = compare(o, e, rtol, atol)
                if msg:
                    problems.append((k, msg))
                else:
                    report.max_abs_error = max(report.max_abs_error, max_abs)
                    report.max_rel_error = max(report.max_rel_error, max_rel)
            for k, (x, before) in enumerate(zip(inputs, saved)):
                if isinstance(x, torch.Tensor) and not torch.equal(x.nan_to_num(), before.nan_to_num()):
                    problems.append((k, f"input {k} was modified by the candidate"))
            for k, msg in problems:
                report.mismatches.append(Mismatch(size, trial, k, msg))
    if verbose:
        print(report)
    if raise_on_fail and not report.ok:
        raise CheckFailed(str(report))
    return report


# ------------------------------------------------------------------------- bench

@dataclass
class Timing:
    """Times of repeated runs in milliseconds; ``clock`` says what measured them."""
    name: str
    times_ms: list[float]
    clock: str  # "cuda events" or "cpu wall time"

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr_ms(self) -> tuple[float, float]:
        q = statistics.quantiles(self.times_ms, n=4) if len(self.times_ms) > 1 else [self.times_ms[0]] * 3
        return q[0], q[2]

    @property
    def us(self) -> float:
        return self.median_ms * 1e3

    def __str__(self) -> str:
        lo, hi = self.iqr_ms
        return (f"{self.name}: median {self.median_ms:.4g} ms "
                f"(IQR {lo:.4g}-{hi:.4g} ms, {len(self.times_ms)} runs, {self.clock})")

    __repr__ = __str__


_L2_FLUSH: torch.Tensor | None = None


def _flush_l2():
    global _L2_FLUSH
    if _L2_FLUSH is None:  # larger than any current L2 (the H200 has 60 MB)
        _L2_FLUSH = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    _L2_FLUSH.zero_()


def bench(fn: Callable, *args, warmup: int = 5, reps: int | None = None, name: str | None = None,
          flush_l2: bool = False, max_seconds: float = 2.0, **kwargs) -> Timing:
    """Time ``fn(*args, **kwargs)``: median of many runs after ``warmup`` runs.

    On a GPU each run sits between two CUDA events on the current stream, so only GPU
    time (launch gaps included) counts; ``flush_l2=True`` clears the L2 cache between runs
    so inputs are read from memory as in a real pipeline. Under the simulator it is CPU
    wall time and says so: simulator times say nothing about a GPU, so there it makes one
    warm-up run and at most three timed runs.
    ``reps`` defaults to as many runs as fit in ``max_seconds`` (between 5 and 200).
    """
    _require_callable("bench", "fn", fn)
    if reps is not None and (isinstance(reps, bool) or not isinstance(reps, int) or reps < 1):
        raise ValueError(f"bench: reps must be a positive int (or None: as many as fit), got {reps!r}")
    name = name or getattr(fn, "__name__", "fn")
    if runtime.SIMULATOR:  # simulated times mean nothing: spend as little as possible on them
        warmup, reps = min(warmup, 1), min(reps or 3, 3)
    for _ in range(warmup):
        fn(*args, **kwargs)
    runtime.synchronize()
    if reps is None:
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        runtime.synchronize()
        one = max(time.perf_counter() - t0, 1e-6)
        reps = int(min(200, max(5, max_seconds / one)))
    times = []
    if runtime.ON_GPU:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            if flush_l2:
                _flush_l2()
            s.record()
            fn(*args, **kwargs)
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        clock = "cuda events"
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times.append((time.perf_counter() - t0) * 1e3)
        clock = "cpu wall time"
    return Timing(name, times, clock)
