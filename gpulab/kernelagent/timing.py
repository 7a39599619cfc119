"""Timing as KernelBench does it, and the metrics agents are scored with.

KernelBench (Ouyang et al., arXiv 2502.10517) times a kernel with a few warm-up runs, then
many runs each between two CUDA events, and later versions flush the L2 cache between
runs so a kernel cannot look fast by reading last run's data from cache. We report the
median and the interquartile range (a mean is pulled by the odd slow run).

Its metric ``fast_p`` is the fraction of tasks whose candidate is *correct and* faster
than the baseline by more than ``p`` (``fast_0`` is the correctness rate, ``fast_1``
"correct and faster than torch"). The geometric mean of the speedups is the usual
summary of how much faster (CUDA-L1 and CudaForge report it against torch eager).

A measured time below what the hardware can do is not a fast kernel: it is a measurement
that was fooled (work on another stream, a cached answer, a skipped computation).
:func:`plausible` compares a time with the roofline bound of the task.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import runtime
from ..harness import bench

__all__ = ["TimingSummary", "kernelbench_time", "fast_p", "geometric_mean_speedup", "plausible",
           "roofline_bound_ms"]

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

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.name}: median {self.median_ms:.4g} ms (IQR {self.q1_ms:.4g}-{self.q3_ms:.4g}, "
                f"{self.runs} runs, {self.clock})")


def kernelbench_time(fn, name: str = "fn", runs: int | None = None) -> TimingSummary:
    """Warm up, then time ``fn()`` between CUDA events with the L2 flushed before each run.

    Under the simulator this is CPU wall time and says so in ``clock``.
    """
    if runs is None:
        runs = RUNS_GPU if runtime.ON_GPU else 5
    t = bench(fn, warmup=WARMUP, reps=runs, name=name, flush_l2=runtime.ON_GPU)
    q1, q3 = t.iqr_ms
    return TimingSummary(name, t.median_ms, q1, q3, len(t.times_ms), t.clock)


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
    """Geometric mean of positive speedups (the summary CUDA-L1 and CudaForge report)."""
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
