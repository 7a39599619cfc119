"""Chapter 11's register-tiled grouped GEMM as it was before its loads and inner loop moved
into the course's core (gpulab.gemm.tiling), kept verbatim (git 019113850f5a, the kernel the
H200 timed at 21.7 TFLOP/s) with its GPU constants: the GPU test compiles it beside today's
kernel and compares their instructions, so the move is shown not to change the code."""
import math

from numba import cuda, float32, int32  # noqa: F401

from gpulab.launch import kernel

BM, BN, BK, TM, TN = 128, 128, 8, 8, 8
THREADS_Y = BM // TM
THREADS_X = BN // TN
X_SHIFT = THREADS_X.bit_length() - 1
GEMM_THREADS = THREADS_Y * THREADS_X
A_LOADS = BM * BK // GEMM_THREADS
W_LOADS = BK * BN // GEMM_THREADS
A_PAD = 4
A_ROW = BM + A_PAD


@cuda.jit(device=True)
def _silu(v):
    return v / (float32(1.0) + math.exp(-v))


@kernel
def grouped_gemm_kernel(a, w, offsets, tile_group, tile_row_start, silu, out):
    """Register-tiled: block (tile, col_tile) computes out[BM rows, BN cols] = act(a @ w[e]).

    The tile table has BM-row tiles (:func:`gemm_tiles`). Per step of BK along K, the 256
    threads stage a BM x BK tile of a (stored transposed: a_t[k, m]) and a BK x BN tile of
    w[e] in shared memory, A_LOADS and W_LOADS elements each; then, for each of the BK
    k's, every thread reads TM values of a column of a_t and TN values of a row of w_t
    into registers and does TM * TN multiply-adds into its accumulators (an outer product).
    Thread (ty, tx) owns rows ty + i * THREADS_Y and columns tx + j * THREADS_X.
    """
    a_t = cuda.shared.array((BK, A_ROW), float32)
    w_t = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((TM, TN), float32)
    a_reg = cuda.local.array(TM, float32)
    w_reg = cuda.local.array(TN, float32)
    g = tile_group[cuda.blockIdx.x]
    if g < 0:
        return                               # a spare tile: the whole block leaves
    tid = cuda.threadIdx.x
    # Masks, not // and %: numba must treat any signed index as possibly negative (Python's
    # a[-1]) and adds a wrap-around fix-up to every shared-memory read. A value masked
    # with a positive constant is provably in range, so the compiler drops the fix-ups and
    # folds each read's i * THREADS_Y offset into the load instruction: about a third
    # fewer instructions in the inner loop, 2.5x the speed (lecture 11, section 3).
    tx = tid & (THREADS_X - 1)
    ty = (tid >> X_SHIFT) & (THREADS_Y - 1)
    row0 = tile_row_start[cuda.blockIdx.x]
    row_end = offsets[g + 1]
    col0 = cuda.blockIdx.y * BN
    K = a.shape[1]
    N = w.shape[2]
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = float32(0.0)
    for k0 in range(0, K, BK):
        for s in range(A_LOADS):             # consecutive threads: consecutive k of a row
            l = tid + s * GEMM_THREADS
            m = l // BK
            kk = l % BK
            row = row0 + m
            v = float32(0.0)
            if row < row_end and k0 + kk < K:
                v = a[row, k0 + kk]
            a_t[kk, m] = v
        for s in range(W_LOADS):             # consecutive threads: consecutive columns
            l = tid + s * GEMM_THREADS
            kk = l // BN
            n = l % BN
            v = float32(0.0)
            if k0 + kk < K and col0 + n < N:
                v = w[g, k0 + kk, col0 + n]
            w_t[kk, n] = v
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(TM):
                a_reg[i] = a_t[kk, ty + i * THREADS_Y]
            for j in range(TN):
                w_reg[j] = w_t[kk, tx + j * THREADS_X]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += a_reg[i] * w_reg[j]
        cuda.syncthreads()                   # done reading before the next tiles land
    for i in range(TM):
        row = row0 + ty + i * THREADS_Y
        if row < row_end:
            for j in range(TN):
                col = col0 + tx + j * THREADS_X
                if col < N:
                    out[row, col] = _silu(acc[i, j]) if silu else acc[i, j]
