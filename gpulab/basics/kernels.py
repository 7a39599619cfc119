"""The first kernels of the course: one thread per element, then a block reduction.

``vector_add`` is the "hello world" of CUDA: thread ``i`` computes ``out[i]``. The grid
has ``ceil(n / block)`` blocks, so the last block may have threads past the end of the
array: the bounds check ``if i < out.size`` keeps them from writing out of bounds.

``block_sums`` sums the elements of each block's slice in shared memory, halving the
number of active threads each step (a tree reduction). ``vector_sum`` applies it until
one number is left: each pass shrinks ``n`` values to ``ceil(n / BLOCK)`` partial sums.
"""
from __future__ import annotations

import math

import torch
from numba import cuda, float32

from .. import runtime
from ..harness import reference
from ..launch import kernel

#: threads per block for the reductions (a power of two: the tree halves it each step)
BLOCK = 256


def _check_vector(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.device.type != runtime.device.type:
        raise ValueError(f"{name} is on {x.device}; kernels need tensors on {runtime.device}")


# --------------------------------------------------------------------- vector add

@kernel
def vector_add_kernel(a, b, out):
    i = cuda.grid(1)          # = blockIdx.x * blockDim.x + threadIdx.x
    if i < out.size:          # the last block may run past the end
        out[i] = a[i] + b[i]


def vector_add(a: torch.Tensor, b: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``a + b`` computed by :func:`vector_add_kernel`, one thread per element."""
    _check_vector(a, "a")
    _check_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = torch.empty_like(a)
    vector_add_kernel[math.ceil(a.numel() / block), block](a, b, out)
    return out


@reference
def reference_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


# ------------------------------------------------------------------ reductions

@kernel
def block_sums_kernel(x, partial):
    """partial[b] = sum of x over the elements that block b visits.

    Each thread first adds up a strided slice of x (a grid-stride loop, so a fixed number
    of blocks covers any n), then the block combines its BLOCK partial values in shared
    memory: at each step the first half of the active threads adds in the second half.
    """
    cache = cuda.shared.array(BLOCK, dtype=float32)
    tid = cuda.threadIdx.x
    acc = float32(0.0)
    i = cuda.grid(1)
    stride = cuda.gridDim.x * cuda.blockDim.x
    while i < x.size:
        acc += x[i]
        i += stride
    cache[tid] = acc
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if tid < step:
            cache[tid] += cache[tid + step]
        cuda.syncthreads()    # every add of this step lands before the next step reads
        step //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = cache[0]


def block_sums(x: torch.Tensor, blocks: int | None = None) -> torch.Tensor:
    """Partial sums of ``x``, one per block (``blocks`` defaults to one per BLOCK elements)."""
    _check_vector(x, "x")
    if blocks is None:
        blocks = max(1, math.ceil(x.numel() / BLOCK))
    partial = torch.empty(blocks, dtype=torch.float32, device=x.device)
    block_sums_kernel[blocks, BLOCK](x, partial)
    return partial


def vector_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of all elements of ``x`` as a 1-element tensor, by two block-reduction passes.

    The first pass uses at most a few blocks per multiprocessor (each thread loops over
    many elements, which keeps the memory system busy), the second reduces those partial
    sums in one block.
    """
    _check_vector(x, "x")
    max_blocks = runtime.pick(8, 4 * 132)   # a few blocks per SM; tiny under the simulator
    blocks = max(1, min(max_blocks, math.ceil(x.numel() / BLOCK)))
    partial = block_sums(x, blocks)
    return block_sums(partial, 1)


@reference
def reference_block_sums(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    n_blocks = max(1, math.ceil(x.numel() / block))
    padded = torch.zeros(n_blocks * block, dtype=torch.float64, device=x.device)
    padded[: x.numel()] = x.double()
    return padded.view(n_blocks, block).sum(1).to(x.dtype)


@reference
def reference_sum(x: torch.Tensor) -> torch.Tensor:
    return x.double().sum().reshape(1).to(x.dtype)
