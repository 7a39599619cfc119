"""The first kernels of the course: one thread per element, then a block reduction.

``vector_add`` is the "hello world" of CUDA: thread ``i`` computes ``out[i]``. The grid
has ``ceil(n / block)`` blocks, so the last block may have threads past the end of the
array: the bounds check ``if i < out.size`` keeps them from writing out of bounds.

``block_sums`` sums the elements of each block's slice in shared memory, halving the
number of active threads each step (a tree reduction). ``vector_sum`` applies it until
one number is left: each pass shrinks ``n`` values to ``ceil(n / BLOCK)`` partial sums.

``transpose_naive_kernel`` and ``transpose_tiled_kernel`` are the first 2-D kernels: a
thread per element, ``x`` along columns. The naive one reads rows and writes columns, so
the 32 threads of a warp write 32 elements a whole row apart; the tiled one (Mark Harris,
"An Efficient Matrix Transpose in CUDA C/C++", NVIDIA Developer Blog, 2013) stages a 32x32
tile in shared memory so that both its global reads and writes run along rows, and pads
the tile's rows to 33 elements so the column read from shared memory hits 32 different
banks (``transpose_tiled_unpadded_kernel`` shows the bank conflicts without the pad).
"""
from __future__ import annotations

import functools
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
    # a few blocks per multiprocessor (SM) keeps every SM busy; the simulator has none, and
    # a simulated thread costs about a millisecond, so 8 blocks there
    max_blocks = 4 * multiprocessor_count() if runtime.ON_GPU else 8
    blocks = max(1, min(max_blocks, math.ceil(x.numel() / BLOCK)))
    partial = block_sums(x, blocks)
    return block_sums(partial, 1)


def multiprocessor_count() -> int:
    """The number of streaming multiprocessors (SMs) of the GPU in use, as the device
    reports it (the driver's ``CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT``; asked once, then
    remembered). Raises ModeError under the simulator, which has no multiprocessors."""
    if not runtime.ON_GPU:
        raise runtime.ModeError("the simulator has no multiprocessors to count; ask on a GPU")
    return _device_multiprocessors()


@functools.cache
def _device_multiprocessors() -> int:
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


@reference
def reference_block_sums(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    n_blocks = max(1, math.ceil(x.numel() / block))
    padded = torch.zeros(n_blocks * block, dtype=torch.float64, device=x.device)
    padded[: x.numel()] = x.double()
    return padded.view(n_blocks, block).sum(1).to(x.dtype)


@reference
def reference_sum(x: torch.Tensor) -> torch.Tensor:
    return x.double().sum().reshape(1).to(x.dtype)


# ------------------------------------------------------------------ 2-D: transpose

#: tile side of the tiled transpose, and the rows of threads per block that walk it (each
#: thread copies TILE // TILE_ROWS elements), as in Harris's blog post
TILE = 32
TILE_ROWS = 8


@kernel
def transpose_naive_kernel(src, dst):
    """dst[c, r] = src[r, c]: one thread per element of src, x along its columns."""
    c, r = cuda.grid(2)                      # x (fastest across a warp) is the column
    if r < src.shape[0] and c < src.shape[1]:
        dst[c, r] = src[r, c]                # reads along a row, writes down a column


def _make_tiled_transpose(pad: int, name: str):
    # TILE + pad columns: with pad = 1 the elements of a tile column lie in 32 different banks.
    # Computed here, not in the kernel: numba needs the shape of a shared array as constants
    # (TILE + pad inside the kernel is a run-time int64 to the compiler; the simulator takes it)
    row_length = TILE + pad

    def transpose_tiled(src, dst):
        tile = cuda.shared.array((TILE, row_length), dtype=float32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        col = cuda.blockIdx.x * TILE + tx
        for k in range(0, TILE, TILE_ROWS):      # load: a warp reads one row of the tile
            row = cuda.blockIdx.y * TILE + ty + k
            if row < src.shape[0] and col < src.shape[1]:
                tile[ty + k, tx] = src[row, col]
        cuda.syncthreads()                       # the whole tile is loaded before any reads it
        col = cuda.blockIdx.y * TILE + tx        # the block's tile lands transposed in dst
        for k in range(0, TILE, TILE_ROWS):      # store: a warp writes one row of dst
            row = cuda.blockIdx.x * TILE + ty + k
            if row < dst.shape[0] and col < dst.shape[1]:
                dst[row, col] = tile[tx, ty + k]  # ... reading a column of the tile
    transpose_tiled.__name__ = transpose_tiled.__qualname__ = name
    return kernel(transpose_tiled)


transpose_tiled_kernel = _make_tiled_transpose(1, "transpose_tiled_kernel")
transpose_tiled_unpadded_kernel = _make_tiled_transpose(0, "transpose_tiled_unpadded_kernel")


def _check_matrix(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.device.type != runtime.device.type:
        raise ValueError(f"{name} is on {x.device}; kernels need tensors on {runtime.device}")


def transpose(x: torch.Tensor, tiled: bool = True) -> torch.Tensor:
    """``x.T`` as a new contiguous tensor, by the tiled kernel (or the naive one)."""
    _check_matrix(x, "x")
    rows, cols = x.shape
    out = torch.empty(cols, rows, dtype=x.dtype, device=x.device)
    if tiled:   # a block per 32x32 tile, each of its 32x8 threads copying 4 elements
        transpose_tiled_kernel[(math.ceil(cols / TILE), math.ceil(rows / TILE)), (TILE, TILE_ROWS)](x, out)
    else:       # a thread per element, in blocks of 32x8
        transpose_naive_kernel[(math.ceil(cols / TILE), math.ceil(rows / TILE_ROWS)), (TILE, TILE_ROWS)](x, out)
    return out


@reference
def reference_transpose(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()
