"""numba.cuda GEMM kernels, with the signature of :func:`gpulab.gemm.torch_impl.gemm`.

Every kernel computes ``out = alpha * a @ b + beta * c`` for any M, N, K (c is not read
when beta == 0) and takes ``(a, b, c, alpha, beta, out)``; the register-tiled ones take B
as a group of one, ``b.view(1, K, N)`` (:mod:`gpulab.gemm.tiling` says why). The ladder::

    naive_kernel            one thread per output; threadIdx.x runs down a column, so a
                            warp reads 32 rows of A and writes 32 rows of out: uncoalesced
    coalesced_kernel        the same with threadIdx.x along a row: a warp reads one row
                            segment of B and writes one of out, in one or two transactions
    tiled_kernel(T)         the paper's kernel (arXiv 2411.16954): T x T threads, one
                            output each, 2 T^2 floats of shared memory; each value of A
                            and B is read from global memory M/T (N/T) times instead of N (M)
    regtile_kernel(1D)      register tiling along M: each thread TM outputs of a column
    regtile_kernel(2D)      a TM x TN micro-tile per thread (128 x 128 block tile, BK 8,
                            8 x 8 per thread on a GPU): each shared read feeds 8 FMAs
    regtile_kernel(2D, double_buffered=True)
                            two shared stages: the next tiles load while the current ones
                            are multiplied, one barrier per step instead of two

The factories are cached: one compiled kernel per configuration. Under the simulator the
default configurations are tiny (each simulated thread is a Python thread).
"""
from __future__ import annotations

import functools
import math

import torch
from numba import cuda, float32

from .. import runtime
from ..launch import kernel
from .problem import check_gemm_inputs
from .tiling import RegisterTiling, inline_device, make_core

__all__ = ["gemm", "naive_kernel", "coalesced_kernel", "tiled_kernel", "regtile_kernel", "KERNELS",
           "NAIVE_BLOCK", "REGTILE_1D", "REGTILE_2D", "launch_config"]

#: side of the naive and coalesced kernels' square blocks
NAIVE_BLOCK = runtime.pick(4, 32)
#: the 1D register tiling: 64 x 64 block tile, BK 8, 8 outputs of a column per thread
#: (512 threads) on a GPU; 8 x 8, BK 4, 4 per thread (16 threads) under the simulator
REGTILE_1D = RegisterTiling(bm=runtime.pick(8, 64), bn=runtime.pick(8, 64), bk=runtime.pick(4, 8),
                            tm=runtime.pick(4, 8), tn=1)
#: the 2D register tiling: 128 x 128, BK 8, 8 x 8 per thread (256 threads) on a GPU, the
#: configuration of chapter 11's grouped GEMM; 16 x 16, BK 4, 4 x 4 (16 threads) simulated
REGTILE_2D = RegisterTiling(bm=runtime.pick(16, 128), bn=runtime.pick(16, 128), bk=runtime.pick(4, 8),
                            tm=runtime.pick(4, 8), tn=runtime.pick(4, 8))
#: the ladder's names, as gemm(kernel=...) takes them
KERNELS = ("naive", "coalesced", "tiled", "regtile1d", "regtile2d", "double_buffered")


@inline_device
def _epilogue(acc, alpha, beta, c, row, col):
    """alpha * acc + beta * c[row, col]; c is not read when beta == 0 (BLAS: it may be NaN)."""
    v = float32(alpha) * acc
    if beta != 0:
        v += float32(beta) * c[row, col]
    return v


# ------------------------------------------------------------ one output per thread

@kernel
def naive_kernel(a, b, c, alpha, beta, out):
    """One thread per output, threadIdx.x along M: neighbouring threads of a warp read
    A[row, k] from neighbouring rows (a stride of K floats) and write out a column."""
    row = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    col = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if row < out.shape[0] and col < out.shape[1]:
        acc = float32(0.0)
        for k in range(a.shape[1]):
            acc += a[row, k] * b[k, col]
        out[row, col] = _epilogue(acc, alpha, beta, c, row, col)


@kernel
def coalesced_kernel(a, b, c, alpha, beta, out):
    """The naive kernel with threadIdx.x along N: a warp reads consecutive B[k, col] and
    writes consecutive out[row, col], while A[row, k] is one value broadcast to the warp."""
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    row = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if row < out.shape[0] and col < out.shape[1]:
        acc = float32(0.0)
        for k in range(a.shape[1]):
            acc += a[row, k] * b[k, col]
        out[row, col] = _epilogue(acc, alpha, beta, c, row, col)


# ------------------------------------------------------------ the paper's tiled kernel

@functools.lru_cache(maxsize=None)
def tiled_kernel(T: int):
    """The shared-memory tiled kernel for T x T blocks (the paper's, T from 1 to 32).

    Each block computes a T x T tile of out; per step along K it stages a T x T tile of A
    and one of B in shared memory (2 T^2 floats), waits for every thread (first barrier),
    does T multiply-adds from shared memory, and waits again before the next tiles
    overwrite these (second barrier). Loads past the matrix edges store zeros.
    """
    if not isinstance(T, int) or not 1 <= T <= 32:
        raise ValueError(f"T must be an int from 1 to 32 (T x T threads per block), got {T!r}")

    @kernel
    def tiled_gemm(a, b, c, alpha, beta, out):
        a_s = cuda.shared.array((T, T), float32)
        b_s = cuda.shared.array((T, T), float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * T + ty
        col = cuda.blockIdx.x * T + tx
        M, K = a.shape
        N = b.shape[1]
        acc = float32(0.0)
        for k0 in range(0, K, T):
            a_s[ty, tx] = a[row, k0 + tx] if row < M and k0 + tx < K else float32(0.0)
            b_s[ty, tx] = b[k0 + ty, col] if k0 + ty < K and col < N else float32(0.0)
            cuda.syncthreads()
            for i in range(T):
                acc += a_s[ty, i] * b_s[i, tx]
            cuda.syncthreads()               # everyone done reading before the next tiles land
        if row < M and col < N:
            out[row, col] = _epilogue(acc, alpha, beta, c, row, col)

    tiled_gemm.__name__ = f"tiled_gemm_T{T}"
    return tiled_gemm


# ------------------------------------------------------------ register tiling

@functools.lru_cache(maxsize=None)
def regtile_kernel(cfg: RegisterTiling = REGTILE_2D, double_buffered: bool = False):
    """A register-tiled kernel of shape ``cfg`` on the course's core (:mod:`.tiling`);
    B is passed as ``b.view(1, K, N)``. ``double_buffered``: two shared stages (see below)."""
    core = make_core(cfg)
    BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
    THREADS_Y, THREADS_X, A_ROW = cfg.threads_y, cfg.threads_x, cfg.a_row

    @inline_device
    def store(out, acc, c, alpha, beta, row0, col0, tx, ty):
        for i in range(TM):
            row = row0 + ty + i * THREADS_Y
            if row < out.shape[0]:
                for j in range(TN):
                    col = col0 + tx + j * THREADS_X
                    if col < out.shape[1]:
                        out[row, col] = _epilogue(acc[i, j], alpha, beta, c, row, col)

    @kernel
    def regtile_gemm(a, b, c, alpha, beta, out):
        a_t = cuda.shared.array((BK, A_ROW), float32)
        b_t = cuda.shared.array((BK, BN), float32)
        acc = cuda.local.array((TM, TN), float32)
        a_reg = cuda.local.array(TM, float32)
        b_reg = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx, ty = core.thread_xy(tid)
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        M, K = a.shape
        N = b.shape[2]
        core.zero(acc)
        for k0 in range(0, K, BK):
            core.load_a(a_t, a, row0, M, k0, K, tid)
            core.load_b(b_t, b, 0, k0, K, col0, N, tid)
            cuda.syncthreads()
            core.multiply(a_t, b_t, a_reg, b_reg, acc, tx, ty)
            cuda.syncthreads()               # done reading before the next tiles land
        store(out, acc, c, alpha, beta, row0, col0, tx, ty)

    @kernel
    def regtile_gemm_double_buffered(a, b, c, alpha, beta, out):
        # Two stages, the loop unrolled by two so that each stage is its own array (no
        # computed stage index). While stage 0 is multiplied, the next tiles load into
        # stage 1, and the other way round: one barrier per step. A stage is overwritten
        # only after the barrier that follows its last multiply, so no thread still reads it.
        a_t0 = cuda.shared.array((BK, A_ROW), float32)
        b_t0 = cuda.shared.array((BK, BN), float32)
        a_t1 = cuda.shared.array((BK, A_ROW), float32)
        b_t1 = cuda.shared.array((BK, BN), float32)
        acc = cuda.local.array((TM, TN), float32)
        a_reg = cuda.local.array(TM, float32)
        b_reg = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx, ty = core.thread_xy(tid)
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        M, K = a.shape
        N = b.shape[2]
        core.zero(acc)
        core.load_a(a_t0, a, row0, M, 0, K, tid)
        core.load_b(b_t0, b, 0, 0, K, col0, N, tid)
        cuda.syncthreads()
        for k0 in range(0, K, 2 * BK):
            if k0 + BK < K:                  # the next step's tiles into stage 1
                core.load_a(a_t1, a, row0, M, k0 + BK, K, tid)
                core.load_b(b_t1, b, 0, k0 + BK, K, col0, N, tid)
            core.multiply(a_t0, b_t0, a_reg, b_reg, acc, tx, ty)
            cuda.syncthreads()               # stage 0 read by all, stage 1 written by all
            if k0 + BK < K:
                if k0 + 2 * BK < K:          # the step after into stage 0
                    core.load_a(a_t0, a, row0, M, k0 + 2 * BK, K, tid)
                    core.load_b(b_t0, b, 0, k0 + 2 * BK, K, col0, N, tid)
                core.multiply(a_t1, b_t1, a_reg, b_reg, acc, tx, ty)
            cuda.syncthreads()               # stage 1 read by all, stage 0 written by all
        store(out, acc, c, alpha, beta, row0, col0, tx, ty)

    chosen = regtile_gemm_double_buffered if double_buffered else regtile_gemm
    chosen.config = cfg
    return chosen


#: one kernel of each factory at module level: every kernel a factory makes shares its
#: code, so the checks refuse any of them as a learner's answer (gpulab.course.feedback)
TILED_16 = tiled_kernel(16)
REGTILE_1D_GEMM = regtile_kernel(REGTILE_1D)
REGTILE_2D_GEMM = regtile_kernel(REGTILE_2D)
DOUBLE_BUFFERED_GEMM = regtile_kernel(REGTILE_2D, double_buffered=True)


# ------------------------------------------------------------ the host side

def _ceil(n: int, d: int) -> int:
    return max(1, math.ceil(n / d))


def launch_config(name: str, m: int, n: int, tile: int = 16):
    """(kernel, grid, block, b_as_group) for the ladder's kernel ``name`` on an M x N output."""
    if name in ("naive", "coalesced"):
        s = NAIVE_BLOCK
        if name == "naive":                  # x along M
            return naive_kernel, (_ceil(m, s), _ceil(n, s)), (s, s), False
        return coalesced_kernel, (_ceil(n, s), _ceil(m, s)), (s, s), False
    if name == "tiled":
        return tiled_kernel(tile), (_ceil(n, tile), _ceil(m, tile)), (tile, tile), False
    if name in ("regtile1d", "regtile2d", "double_buffered"):
        cfg = REGTILE_1D if name == "regtile1d" else REGTILE_2D
        k = regtile_kernel(cfg, double_buffered=name == "double_buffered")
        return k, (_ceil(n, cfg.bn), _ceil(m, cfg.bm)), cfg.threads, True
    raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")


def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, alpha: float = 1.0,
         beta: float = 0.0, kernel: str = "regtile2d", tile: int = 16,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`gpulab.gemm.torch_impl.gemm` by one of the ladder's kernels (``KERNELS``);
    ``tile``: T of the tiled kernel; ``out``: an M x N float32 buffer to write into."""
    check_gemm_inputs(a, b, c, beta)
    if a.device.type != runtime.device.type:
        raise ValueError(f"a is on {a.device}; the kernels need tensors on {runtime.device} "
                         "(use .to(gpulab.device))")
    m, n = a.shape[0], b.shape[1]
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32, device=a.device)
    elif out.shape != (m, n) or out.dtype != torch.float32 or out.device != a.device:
        raise ValueError(f"out must be a float32 ({m}, {n}) tensor on {a.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if m == 0 or n == 0:
        return out
    fn, grid, block, b_as_group = launch_config(kernel, m, n, tile)
    a, b = a.contiguous(), b.contiguous()
    if b_as_group:
        b = b.view(1, *b.shape)
    fn[grid, block](a, b, c if c is not None else out, float(alpha), float(beta), out)
    return out
