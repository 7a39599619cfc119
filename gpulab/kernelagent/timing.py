"""Timing as KernelBench does it, and the metrics agents are scored with.

KernelBench (Ouyang et al., arXiv 2502.10517) times a kernel with a few warm-up runs, then
many runs each between two CUDA events, and later versions flush the L2 cache between
runs so a kernel cannot look fast by reading last run's data from cache. Its
``timing.py`` reports the mean, standard deviation, minimum and maximum of the runs; we
report those and also the median and the interquartile range, as robust-kbench does (a
mean is pulled by the odd slow run).

The verifier's timed runs (:func:`timed_runs`) go further, as GPU MODE's eval does with
``recheck``: every timed run gets **fresh inputs** and its output is **checked**, so a
candidate that notices it is being timed and does less is wrong there; the CUDA-event
methods are taken from torch's C extension when this module is imported (before any
candidate runs), so patching ``torch.cuda.Event`` fakes nothing.

Its metric ``fast_p`` is the fraction of tasks whose candidate is *correct and* faster
than the baseline by more than ``p`` (``fast_0`` is the correctness rate, ``fast_1``
"correct and faster than torch"). The geometric mean of the speedups summarises how much
faster in a way no single outlier can carry; an arithmetic mean of ratios is pulled up by
one huge speedup (CUDA-L1's first version reported an arithmetic mean of 17.7x; its
current version adds the median, 1.42x).

A measured time below what the hardware can do is not a fast kernel: it is a measurement
that was fooled (work on another stream, a cached answer, a skipped computation).
:func:`plausible` compares a time with the roofline bound of the task.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .. import runtime
from ..harness import bench

__all__ = ["TimingSummary", "kernelbench_time", "fast_p", "geometric_mean_speedup", "plausible",
           "roofline_bound_ms", "timed_runs", "summarize", "flush_l2"]

WARMUP = 3
RUNS_GPU = 100


@dataclass
class TimingSummary:
    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int
    clock: str
    mean_ms: float = float("nan")     # KernelBench's four: mean, std, min, max
    std_ms: float = float("nan")
    min_ms: float = float("nan")
    max_ms: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.name}: median {self.median_ms:.4g} ms (IQR {self.q1_ms:.4g}-{self.q3_ms:.4g}); "
                f"mean {self.mean_ms:.4g} ± {self.std_ms:.2g} ms, min {self.min_ms:.4g}, max {self.max_ms:.4g} "
                f"({self.runs} runs, {self.clock})")


def kernelbench_time(fn, name: str = "fn", runs: int | None = None) -> TimingSummary:
    """Warm up, then time ``fn()`` between CUDA events with the L2 flushed before each run.

    Under the simulator this is CPU wall time and says so in ``clock``.
    """
    if runs is None:
        runs = RUNS_GPU if runtime.ON_GPU else 5
    t = bench(fn, warmup=WARMUP, reps=runs, name=name, flush_l2=runtime.ON_GPU)
    return summarize(name, t.times_ms, t.clock)


def summarize(name: str, times_ms, clock: str) -> TimingSummary:
    """Median and quartiles, and KernelBench's mean, std, min and max, of ``times_ms``."""
    times = [float(t) for t in times_ms]
    if not times:
        raise ValueError("no times to summarize")
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    return TimingSummary(name, statistics.median(times), q1, q3, len(times), clock,
                         statistics.fmean(times), std, min(times), max(times))


# ---------------------------------------------------------- the verifier's timed runs
# torch.cuda.Event is a Python class whose record/elapsed_time call these C methods: a
# candidate may patch the Python class, our references stay the C ones
_EVENT_BASE = getattr(torch._C, "_CudaEventBase", None)
_CURRENT_STREAM = torch.cuda.current_stream
_ZERO = torch.Tensor.zero_
_CLOCK = time.perf_counter          # ours, whatever a candidate does to the time module
_L2: list = []


def flush_l2() -> None:
    """Overwrite a buffer larger than any L2 cache (the H200's is 60 MB)."""
    if not _L2:
        _L2.append(torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda"))
    _ZERO(_L2[0])


def _event():
    event = torch.cuda.Event(enable_timing=True)
    return event


def timed_runs(call, inputs_for, new_out, sink, runs: int, warmup: int = 2) -> dict:
    """Time ``runs`` calls, each on fresh inputs, each output handed to ``sink``.

    ``inputs_for(i)`` draws run ``i``'s inputs (outside the timed window), ``new_out()``
    a NaN-poisoned output, ``call(xs, out)`` is what is timed, ``sink(i, xs, out)`` takes
    the output away before the next run (to be checked). On a GPU each call sits between
    two CUDA events with the L2 flushed before it; under the simulator it is CPU wall
    time. Returns ``times_ms``, ``clock`` and ``wall_s`` (this loop's own host time).
    """
    for w in range(warmup):
        call(inputs_for(-1 - w), new_out())
    runtime.synchronize()
    times = []
    started = _CLOCK()
    for i in range(runs):
        xs, out = inputs_for(i), new_out()
        if runtime.ON_GPU and _EVENT_BASE is not None:
            start, end = _event(), _event()
            torch.cuda.synchronize()
            flush_l2()
            _EVENT_BASE.record(start, _CURRENT_STREAM())
            call(xs, out)
            _EVENT_BASE.record(end, _CURRENT_STREAM())
            _EVENT_BASE.synchronize(end)
            times.append(_EVENT_BASE.elapsed_time(start, end))
        else:
            runtime.synchronize()
            t0 = _CLOCK()
            call(xs, out)
            runtime.synchronize()
            times.append((_CLOCK() - t0) * 1e3)
        sink(i, xs, out)
    clock = "cuda events" if runtime.ON_GPU else "cpu wall time"
    return {"times_ms": times, "clock": clock, "wall_s": _CLOCK() - started}


def fast_p(results, p: float = 1.0) -> float:
    """KernelBench's fast_p: share of ``results`` that are correct and have speedup > ``p``.

    ``results``: iterable of ``(correct: bool, speedup: float | None)``, one per task.
    """
    results = list(results)
    if not results:
        raise ValueError("fast_p needs at least one result")
    good = sum(1 for ok, s in results if ok and s is not None and s > p)
    return good / len(results)


def geometric_mean_speedup(speedups) -> float:
    """Geometric mean of positive speedups (a summary no single outlier can carry)."""
    speedups = [float(s) for s in speedups]
    if not speedups:
        raise ValueError("no speedups to average")
    if any(s <= 0 or not math.isfinite(s) for s in speedups):
        raise ValueError(f"speedups must be positive and finite, got {speedups}")
    return math.exp(sum(math.log(s) for s in speedups) / len(speedups))


def roofline_bound_ms(bytes_moved: float, flops: float, copy_gbps: float, fp32_gflops: float) -> float:
    """The least time the work can take: memory time or compute time, whichever is larger."""
    return max(bytes_moved / (copy_gbps * 1e9), flops / (fp32_gflops * 1e9)) * 1e3


def plausible(time_ms: float, bytes_moved: float, flops: float, copy_gbps: float,
              fp32_gflops: float, slack: float = 0.8) -> tuple[bool, str]:
    """Is ``time_ms`` at least ``slack`` times the roofline bound? Returns (ok, explanation).

    ``slack`` < 1 leaves room for a measured copy bandwidth below the true peak.
    """
    bound = roofline_bound_ms(bytes_moved, flops, copy_gbps, fp32_gflops)
    ok = time_ms >= slack * bound
    why = (f"{time_ms:.4g} ms against a roofline floor of {bound:.4g} ms "
           f"({bytes_moved / 1e6:.3g} MB at {copy_gbps:.0f} GB/s, {flops / 1e9:.3g} GFLOP at "
           f"{fp32_gflops:.0f} GFLOP/s)")
    return ok, ("plausible: " if ok else "faster than the hardware allows: ") + why
