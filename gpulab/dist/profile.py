"""Galvatron's profiler, small: what the cost model needs measured on this machine.

* :func:`collective_ms` (run in every rank of a ``Workers`` pool, or in one process with a
  group of one): the time of an all-reduce of 1..N MiB, so the cost model gets
  milliseconds per MiB for each group size;
* :func:`layer_forward_ms`: the forward time of one layer against the micro-batch size,
  fitted to a line (Galvatron's ``forward_computation_time`` is the slope and intercept).

Timing on a GPU uses CUDA events after warm-up; on CPU, wall time (labelled so).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

__all__ = ["collective_ms", "fit_ms_per_mib", "layer_forward_ms", "fit_line"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def collective_ms(sizes_mib=(1, 4, 16), reps: int = 5, size: int | None = None) -> dict | None:
    """Median all-reduce time (ms) of float32 tensors of each size, on the pool's first
    ``size`` ranks (every rank calls it; ranks outside get None)."""
    import torch.distributed as dist

    from .groups import member

    setup = member(size or dist.get_world_size())
    if setup is None:
        return None
    out = {}
    for mib in sizes_mib:
        x = torch.ones(int(mib * 1024 * 1024 // 4), device=setup.device)
        dist.all_reduce(x, group=setup.group)            # warm-up (connections, buffers)
        times = []
        for _ in range(reps):
            dist.barrier(group=setup.group)
            _sync(setup.device)
            t0 = time.perf_counter()
            dist.all_reduce(x, group=setup.group)
            _sync(setup.device)
            times.append((time.perf_counter() - t0) * 1e3)
        out[mib] = statistics.median(times)
    return out


def fit_ms_per_mib(times: dict) -> float:
    """Slope of time against MiB (least squares through the measured sizes)."""
    xs = np.array(sorted(times), dtype=float)
    ys = np.array([times[x] for x in sorted(times)], dtype=float)
    if len(xs) < 2:
        return float(ys[0] / xs[0])
    return float(np.polyfit(xs, ys, 1)[0])


def fit_line(xs, ys) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def layer_forward_ms(layer: torch.nn.Module, make_input, batches=(1, 2), reps: int = 5) -> dict:
    """Median forward time (ms, no grad) of ``layer(make_input(b))`` for each batch ``b``."""
    out = {}
    for b in batches:
        x = make_input(b)
        device = x.device
        with torch.no_grad():
            for _ in range(2):          # warm-up: first calls pay for allocation and dispatch
                layer(x)
            _sync(device)
            times = []
            for _ in range(reps):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    layer(x)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    layer(x)
                    times.append((time.perf_counter() - t0) * 1e3)
        out[b] = statistics.median(times)
        del x
    return out
