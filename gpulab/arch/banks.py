"""Shared-memory bank conflicts: count them by hand, then see the tracer count them.

Shared memory is 32 banks of 4-byte words; word ``w`` lives in bank ``w % 32``. In one
warp access each bank delivers one word per pass (a *wavefront*), so the access takes as
many wavefronts as the busiest bank has DIFFERENT words to deliver. Threads that read the
same word share it (a broadcast), so they cost nothing extra. An 8-byte element covers two
consecutive words (two banks).

* stride 1 (thread t reads word t): every bank once, 1 wavefront;
* stride 2: banks 0, 2, 4, ... each twice: 2 wavefronts (a 2-way conflict);
* stride 32: every thread in bank 0: 32 wavefronts;
* any odd stride: every bank once again (odd numbers are coprime with 32): 1 wavefront,
  which is why a tile padded to 33 columns reads its columns without conflicts.

In general a stride ``s`` over 4-byte words costs ``gcd(s, 32)`` wavefronts.

:func:`conflict_ways` is the count, written out; :func:`traced_sweep` runs a kernel on the
simulator and reads the same count off :meth:`gpulab.simtrace.Recording.warp_accesses`,
the course's tracer, which counts every shared access a kernel makes this way.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda, float32, float64

import gpulab
from ..simtrace import BANK_BYTES, BANKS, WARP_SIZE

__all__ = ["conflict_ways", "stride_addresses", "expected_ways", "traced_sweep", "strided_read_kernel",
           "strided_read_kernel_f64", "SHARED_WORDS"]

#: words of the sweep's shared array: 32 threads at strides up to 33 (index 31 * 33 = 1023)
SHARED_WORDS = 1024
#: the same bytes as 8-byte elements (a constant: numba needs a shared array's shape as one)
SHARED_DOUBLES = SHARED_WORDS // 2


def conflict_ways(byte_addresses, itemsize: int = 4) -> torch.Tensor:
    """Wavefronts of each warp access. ``byte_addresses``: int tensor [warps, lanes]
    (byte offsets into shared memory of each lane's element, lanes <= 32; -1 = lane
    inactive); returns int64 [warps]: the largest number of DIFFERENT 4-byte words any one
    bank must deliver (at least 1 for an access with an active lane, 0 for none)."""
    a = torch.as_tensor(byte_addresses)
    if a.dim() != 2 or a.shape[1] > WARP_SIZE or a.dtype.is_floating_point:
        raise ValueError(f"byte_addresses must be an integer tensor [warps, <=32 lanes], got {tuple(a.shape)} {a.dtype}")
    if itemsize not in (1, 2, 4, 8, 16):
        raise ValueError(f"itemsize must be 1, 2, 4, 8 or 16 bytes, got {itemsize}")
    rows = a.cpu().numpy().astype(np.int64)
    ways = []
    for row in rows:
        row = row[row >= 0]
        words_of_bank: dict[int, set] = {}
        for address in row:
            first = address // BANK_BYTES
            for word in range(first, first + max(1, itemsize // BANK_BYTES)):
                words_of_bank.setdefault(word % BANKS, set()).add(word)
        ways.append(max((len(w) for w in words_of_bank.values()), default=0))
    return torch.tensor(ways, dtype=torch.int64)


def stride_addresses(stride: int, itemsize: int = 4, lanes: int = WARP_SIZE) -> torch.Tensor:
    """Byte addresses of one warp whose thread t reads element ``t * stride``: [1, lanes]."""
    return (torch.arange(lanes, dtype=torch.int64) * stride * itemsize)[None, :]


def expected_ways(stride: int, itemsize: int = 4) -> int:
    """The closed form for a strided warp access (stride in elements, >= 1)."""
    words = max(1, itemsize // BANK_BYTES)
    if words == 1:
        return math.gcd(stride, BANKS)
    # 8-byte elements: the warp's 64 words over 32 banks take at least 2 wavefronts
    return int(conflict_ways(stride_addresses(stride, itemsize), itemsize)[0])


# ------------------------------------------------------------------ the kernels the tracer watches


@gpulab.kernel
def strided_read_kernel(stride, out):
    """Thread t of the block writes its lane to word t*stride of a shared array, then
    reads it back: one shared write and one shared read per thread, both strided."""
    buf = cuda.shared.array(SHARED_WORDS, dtype=float32)
    t = cuda.threadIdx.x
    word = (t * stride) % SHARED_WORDS
    buf[word] = t
    cuda.syncthreads()
    out[t] = buf[word]


@gpulab.kernel
def strided_read_kernel_f64(stride, out):
    """:func:`strided_read_kernel` on 8-byte elements."""
    buf = cuda.shared.array(SHARED_DOUBLES, dtype=float64)
    t = cuda.threadIdx.x
    word = (t * stride) % SHARED_DOUBLES
    buf[word] = t
    cuda.syncthreads()
    out[t] = buf[word]


def traced_sweep(strides, itemsize: int = 4) -> dict[int, int]:
    """Under the simulator: run the strided kernel for each stride inside ``gpulab.trace()``
    and return stride -> wavefronts of its shared read, as the tracer counts them."""
    if not gpulab.SIMULATOR:
        raise RuntimeError("the tracer watches simulated kernels only; on a GPU, time the sweep "
                           "(benchmarks/01_gpu_architecture.py) or read Nsight Compute's bank-conflict counters")
    if itemsize not in (4, 8):
        raise ValueError(f"the sweep has float32 (4) and float64 (8) kernels, got itemsize {itemsize}")
    kernel = strided_read_kernel if itemsize == 4 else strided_read_kernel_f64
    dtype = torch.float32 if itemsize == 4 else torch.float64
    result = {}
    for stride in strides:
        if not 1 <= stride <= 33:
            raise ValueError(f"strides run 1..33 (the shared array holds 32 threads at stride 33), got {stride}")
        out = torch.zeros(WARP_SIZE, dtype=dtype)
        with gpulab.trace() as t:
            kernel[1, WARP_SIZE](stride, out)
        reads = [w for w in t.warp_accesses("shared") if w.kind == "read"]
        assert len(reads) == 1, f"expected one shared warp read, the tracer saw {len(reads)}"
        result[stride] = reads[0].cost
    return result
