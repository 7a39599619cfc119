"""The microbenchmark kernels the chapter's GPU sweeps time (benchmarks/01_gpu_architecture.py).

Each is small and does one thing, so its time says one thing about the hardware:

* :func:`copy_kernel`: a grid-stride copy, the bandwidth ceiling (against torch's copy);
* :func:`strided_copy_kernel`: thread i reads ``src[offset + i * stride]``: how much of each
  32-byte sector a warp uses (stride) and whether its accesses start on a sector (offset);
* :func:`divergence_kernel`: the lanes of a warp take ``ways`` different branches, which a
  warp runs one after the other: time grows with ``ways``;
* :func:`ffma_kernel`: ``ilp`` independent FFMA chains per thread; with few warps, a chain
  waits for its last result (the FFMA latency, 4 cycles in the issue model), and more chains
  or more warps fill those cycles: the ILP x warps grid is where the issue model is tested.

The simulator runs them at tiny sizes (clock64 counts no cycles there): the tests check
what they compute, the GPU measures how fast.
"""
from __future__ import annotations

import functools

from numba import cuda, float32, int32

import gpulab
from .intrinsics import clock64

__all__ = ["copy_kernel", "strided_copy_kernel", "divergence_kernel", "ffma_kernel", "ffma_reference", "MAX_ILP"]

MAX_ILP = 8


@gpulab.kernel
def copy_kernel(src, dst):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dst.size:
        dst[i] = src[i]
        i += step


@gpulab.kernel
def strided_copy_kernel(src, dst, stride, offset):
    """dst[i] = src[offset + i * stride] for i < dst.size (src holds enough elements)."""
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = src[offset + i * stride]


@gpulab.kernel
def divergence_kernel(x, iters, ways, out, cycles):
    """Lane l of each warp runs branch ``l % ways``: ``iters`` FFMAs with its own constant.
    A warp executes each taken branch in turn, the other lanes masked off. cycles[warp] =
    the warp's clock64 cycles (0 under the simulator)."""
    i = cuda.grid(1)
    lane = cuda.threadIdx.x % 32
    acc = x[i] if i < x.size else float32(0.0)
    c0 = clock64()
    branch = lane % ways
    for b in range(ways):
        if branch == b:
            k = float32(1.0 + 0.001 * b)        # float32 throughout: a bare 0.999 is float64 (DFMA)
            for _ in range(iters):
                acc = acc * float32(0.999) + k
    c1 = clock64()
    if i < out.size:
        out[i] = acc
    if lane == 0 and i // 32 < cycles.size:
        cycles[i // 32] = c1 - c0


@functools.lru_cache(maxsize=None)
def ffma_kernel(ilp: int):
    """The FFMA-chain kernel for ``ilp`` independent chains (1..8), compiled once each:
    ``ilp`` is a constant of the kernel, so unused chains vanish and each live chain is a
    register. Launch with one block: out[t] = the sum of its chains, cycles[0] = the block's
    cycles (between two barriers) for ``iters`` rounds of ``ilp`` FFMAs per thread."""
    if not 1 <= ilp <= MAX_ILP:
        raise ValueError(f"ilp must be 1..{MAX_ILP}, got {ilp}")

    def ffma_chains(x, iters, out, cycles):
        t = cuda.threadIdx.x
        a = x[t]
        b = x[t] + float32(1.0)         # a bare 1.0 is float64: the chains would be DFMAs, not FFMAs
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = a
        n = int32(iters)
        k = int32(0)
        cuda.syncthreads()
        start = clock64()
        # an int32 while loop: numba's range() over the int64 argument compiles to a 64-bit
        # count-down (ISETP.EX/SEL/IADD3/IMAD.X per round, ~20 cycles) that would swamp the
        # FFMAs; this one unrolls to 16 rounds of FFMAs per 5 loop instructions
        while k < n:
            k += int32(1)
            c0 = c0 * a + b
            if ilp > 1:
                c1 = c1 * a + b
            if ilp > 2:
                c2 = c2 * a + b
            if ilp > 3:
                c3 = c3 * a + b
            if ilp > 4:
                c4 = c4 * a + b
            if ilp > 5:
                c5 = c5 * a + b
            if ilp > 6:
                c6 = c6 * a + b
            if ilp > 7:
                c7 = c7 * a + b
        cuda.syncthreads()
        end = clock64()
        total = c0
        if ilp > 1:
            total += c1
        if ilp > 2:
            total += c2
        if ilp > 3:
            total += c3
        if ilp > 4:
            total += c4
        if ilp > 5:
            total += c5
        if ilp > 6:
            total += c6
        if ilp > 7:
            total += c7
        out[t] = total                  # stored: the chains are live
        if t == 0:
            cycles[0] = end - start

    ffma_chains.__name__ = f"ffma_chains_ilp{ilp}"
    return gpulab.kernel(ffma_chains)


def ffma_reference(x, iters: int, ilp: int):
    """What ffma_kernel(ilp) stores, in float64 on the host: every chain is the same
    recurrence c <- c * a + b from c = a, so the sum is ilp times one chain."""
    import torch

    a = torch.as_tensor(x, dtype=torch.float64).cpu()
    b = a + 1.0
    c = a.clone()
    for _ in range(iters):
        c = c * a + b
    return ilp * c
