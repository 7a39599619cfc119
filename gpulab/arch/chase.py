"""The pointer chase: time one memory level by loads that each wait for the one before.

The Hopper paper (Luo et al., arXiv 2402.13499, following Mei & Chu's fine-grained
P-chase) measures latency with one thread that follows a chain of indices through an
array, ``j = next[j]``: each load's address is the previous load's value, so the loads
cannot overlap and (end clock - start clock) / loads is the latency of one load. For the
chase to measure a level, three things must hold:

1. **one cycle through every element**: if the chain closes early (a random permutation
   has about ln(n) cycles), the chase circles in a small part of the array, which then
   fits in a faster cache. Sattolo's algorithm draws a permutation that is ONE cycle;
2. **one element per cache line**: the elements sit ``line_bytes`` apart, so every load is
   a new line (no free hits within a line) and the working set is ``lines * line_bytes``;
3. **the result is stored**: a chase whose final index is never written is dead code to
   the compiler, which deletes the loads (and the timing then measures nothing).

Which cache a load may use is chosen by its cache operator: ``ld.global.ca`` (cache in L1
and L2: ``cuda.ldca``) or ``ld.global.cg`` (L2 only, bypass L1: ``cuda.ldcg``); numba-cuda
0.30 has both. The simulator has neither, so there :func:`load_l1` and :func:`load_l2` are
plain loads (the simulator has no caches either).

The index is kept unsigned (``uint32``): numba then skips the negative-index wraparound
(sign extension, compare, two selects, a 64-bit add) it puts in front of a signed index, and
each hop is one ``IMAD.WIDE.U32`` and the load, as in the CUDA C++ chase (seen in the sm_90
SASS: about 23 cycles of address arithmetic a hop with a signed index, 6 with this one).

The kernels are one thread, one block. :func:`chase_kernel` times a whole pass;
:func:`chase_path_kernel` records every index it visits and every load's own cycles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import cuda, uint32

import gpulab
from .. import runtime
from .intrinsics import COUNTS_CYCLES, clock64, cycles_note, globaltimer

__all__ = ["sattolo", "random_cycle", "cycle_lengths", "is_one_cycle", "chase_array", "load_l1", "load_l2",
           "chase_kernel", "chase_kernel_l2", "chase_path_kernel", "chase", "ChaseResult", "LINE_BYTES",
           "follow"]

#: L1 line (and the chase's default spacing): 128 bytes; an L2 sector is 32 bytes
LINE_BYTES = 128

if runtime.ON_GPU:
    load_l1 = cuda.ldca          # ld.global.ca: cached in L1 and L2
    load_l2 = cuda.ldcg          # ld.global.cg: cached in L2 only
else:
    def load_l1(array, i):
        """Simulator shim for cuda.ldca (the simulator has no caches): a plain load."""
        return array[i]

    def load_l2(array, i):
        """Simulator shim for cuda.ldcg (the simulator has no caches): a plain load."""
        return array[i]


# ------------------------------------------------------------------ one random cycle


def sattolo(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sattolo's algorithm: a uniformly random permutation with exactly ONE cycle.

    Like Fisher-Yates, but position ``i`` swaps with a ``j`` drawn from ``0..i-1``, never
    ``i`` itself, so no element can stay where it is and the cycle never closes early.
    Returns ``succ`` (int64, length n): following ``j = succ[j]`` from any start visits all n.
    A Python loop: fine for the lecture's sizes; :func:`random_cycle` is the fast way.
    """
    _check_n(n)
    succ = list(range(n))
    draws = torch.rand(max(n - 1, 0), generator=generator, dtype=torch.float64).tolist()
    for i in range(n - 1, 0, -1):
        j = min(int(draws[n - 1 - i] * i), i - 1)    # uniform in 0..i-1
        succ[i], succ[j] = succ[j], succ[i]
    return torch.tensor(succ, dtype=torch.int64)


def random_cycle(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same distribution as :func:`sattolo`, vectorised: visit the elements in a random
    order and link each to the next, the last back to the first. Each of the (n-1)! cycles
    comes from n orders (its rotations), so all are equally likely."""
    _check_n(n)
    order = torch.randperm(n, generator=generator)
    succ = torch.empty(n, dtype=torch.int64)
    succ[order] = torch.roll(order, -1)
    return succ


def cycle_lengths(succ) -> list[int]:
    """Lengths of the cycles of a permutation ``succ`` (sorted, longest first); raises
    ValueError if ``succ`` is not a permutation of 0..n-1."""
    s = np.asarray(torch.as_tensor(succ).cpu(), dtype=np.int64).ravel()
    n = s.size
    if n == 0 or s.min() < 0 or s.max() >= n or np.unique(s).size != n:
        raise ValueError("not a permutation of 0..n-1: some index is repeated, missing or out of range")
    succ, seen = s.tolist(), [False] * n      # Python lists: faster than NumPy scalars in a loop
    lengths = []
    for start in range(n):
        if seen[start]:
            continue
        length, j = 0, start
        while not seen[j]:
            seen[j] = True
            j = succ[j]
            length += 1
        lengths.append(length)
    return sorted(lengths, reverse=True)


def is_one_cycle(succ) -> bool:
    try:
        return len(cycle_lengths(succ)) == 1
    except ValueError:
        return False


def chase_array(working_set_bytes: int, line_bytes: int = LINE_BYTES, generator: torch.Generator | None = None,
                device=None, dtype=torch.int32) -> torch.Tensor:
    """The array the chase follows: ``working_set_bytes / line_bytes`` lines, one element
    used per line (the first), holding the element index of the next line on ONE random
    cycle. Elements not on the chain are 0 (never read).

        >>> a = chase_array(4 * 128, generator=torch.Generator().manual_seed(0))
        >>> a.shape, sorted(a[::32].tolist())          # 4 lines of 32 int32: starts 0, 32, 64, 96
        (torch.Size([128]), [0, 32, 64, 96])
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    if line_bytes <= 0 or line_bytes % itemsize:
        raise ValueError(f"line_bytes must be a positive multiple of the element size ({itemsize}), got {line_bytes}")
    if working_set_bytes < 2 * line_bytes or working_set_bytes % line_bytes:
        raise ValueError(f"working_set_bytes must be a multiple of line_bytes={line_bytes} and hold at least "
                         f"2 lines, got {working_set_bytes}")
    lines = working_set_bytes // line_bytes
    stride = line_bytes // itemsize
    if lines * stride >= torch.iinfo(dtype).max:
        raise ValueError(f"{lines * stride} elements do not fit {dtype} indices")
    succ = random_cycle(lines, generator)
    array = torch.zeros(lines * stride, dtype=dtype)
    array[::stride] = (succ * stride).to(dtype)
    return array.to(device if device is not None else gpulab.device)


def follow(array, start: int, steps: int) -> int:
    """The index a chase of ``steps`` loads from ``start`` ends on (host reference)."""
    a = np.asarray(torch.as_tensor(array).cpu())
    j = int(start)
    for _ in range(steps):
        j = int(a[j])
    return j


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"a cycle needs n >= 1 elements (an int), got {n!r}")


# ------------------------------------------------------------------ the kernels


@gpulab.kernel
def chase_kernel(array, steps, warmup, out):
    """One thread: ``warmup`` loads to fill the caches, then ``steps`` timed L1-cached
    loads (``ld.global.ca``). out[0] = last index (stored: otherwise the loads are dead
    code), out[1] = cycles of the timed loads, out[2] = their nanoseconds (%globaltimer)."""
    j = uint32(0)           # an unsigned index: no negative-index wraparound select in each hop
    for _ in range(warmup):
        j = uint32(load_l1(array, j))
    t0 = globaltimer()
    c0 = clock64()
    for _ in range(steps):
        j = uint32(load_l1(array, j))
    if j >= array.size:     # a use of j before the clock read: it waits for the last load
        j = uint32(0)
    c1 = clock64()
    t1 = globaltimer()
    out[0] = j
    out[1] = c1 - c0
    out[2] = t1 - t0


@gpulab.kernel
def chase_kernel_l2(array, steps, warmup, out):
    """:func:`chase_kernel` with ``ld.global.cg`` loads: cached in L2 only (bypass L1)."""
    j = uint32(0)
    for _ in range(warmup):
        j = uint32(load_l2(array, j))
    t0 = globaltimer()
    c0 = clock64()
    for _ in range(steps):
        j = uint32(load_l2(array, j))
    if j >= array.size:
        j = uint32(0)
    c1 = clock64()
    t1 = globaltimer()
    out[0] = j
    out[1] = c1 - c0
    out[2] = t1 - t0


@gpulab.kernel
def chase_path_kernel(array, path, clocks):
    """The fine-grained chase: path[k] = the k-th index visited, clocks[k] = that load's
    own cycles (the paper's P-chase records each load, showing where a cache's hits end)."""
    j = uint32(0)
    for k in range(path.shape[0]):
        c0 = clock64()
        j = uint32(load_l1(array, j))
        path[k] = j              # the store waits for the load: the clock after it sees its latency
        clocks[k] = clock64() - c0


@dataclass
class ChaseResult:
    working_set_bytes: int
    level: str                 # "l1" (ld.global.ca) or "l2" (ld.global.cg)
    steps: int
    last_index: int
    cycles_per_load: float     # 0 under the simulator (no cycles counted)
    ns_per_load: float
    counts_cycles: bool
    note: str


def chase(working_set_bytes: int, level: str = "l1", steps: int | None = None, warmup: int | None = None,
          line_bytes: int = LINE_BYTES, generator: torch.Generator | None = None) -> ChaseResult:
    """Build the chain for a working set and time ``steps`` loads through it (after
    ``warmup`` loads: by default one pass, capped at 2^19, so a set that fits a cache is in it).
    Checks that the kernel ended where the host's reference says."""
    if level not in ("l1", "l2"):
        raise ValueError(f"level is 'l1' (ld.global.ca) or 'l2' (ld.global.cg), got {level!r}")
    array = chase_array(working_set_bytes, line_bytes, generator)
    lines = working_set_bytes // line_bytes
    steps = min(lines, 4096) if steps is None else steps
    warmup = min(lines, 1 << 19) if warmup is None else warmup
    out = torch.zeros(3, dtype=torch.int64, device=array.device)
    kernel = chase_kernel if level == "l1" else chase_kernel_l2
    kernel[1, 1](array, steps, warmup, out)
    last, cycles, ns = out.tolist()
    expected = _expected_end(array, warmup + steps, line_bytes // array.element_size())
    if last != expected:
        raise RuntimeError(f"the chase ended at {last}, the chain says {expected}")
    return ChaseResult(working_set_bytes, level, steps, last, cycles / steps, ns / steps, COUNTS_CYCLES,
                       cycles_note())


def _expected_end(array, loads: int, stride: int) -> int:
    """Where ``loads`` loads from 0 end, computed on the line chain (the cycle has period
    = lines, so only loads % lines steps are followed)."""
    chain = array[::stride].cpu().numpy() // stride
    j = 0
    for _ in range(loads % chain.size):
        j = int(chain[j])
    return j * stride


def lines_in(working_set_bytes: int, line_bytes: int = LINE_BYTES) -> int:
    return math.ceil(working_set_bytes / line_bytes)
