"""The course's register-tiling core: one block computes a BM x BN tile of the output in
steps of BK along K, each of its threads a TM x TN micro-tile held in registers.

Chapter 02's register-tiled kernels (1D: TN = 1, 2D, double-buffered) and chapter 11's
grouped GEMM (:mod:`gpulab.moe.kernels`) are built from the device functions made here, so
a speed-up of the core speeds up both. The functions are force-inlined (``forceinline``
adds LLVM's ``alwaysinline``), so a kernel built from them compiles to the same code as
one that spells the loops out: the local arrays stay in registers.

Per step of BK along K, the threads of a block stage a BM x BK tile of A (stored
transposed, ``a_t[k, m]``, rows padded by ``a_pad`` floats so that the transposing stores
fall in distinct banks) and a BK x BN tile of B in shared memory; then, for each of the BK
k's, every thread reads TM values of a column of ``a_t`` and TN values of a row of
``b_t`` into registers and does TM * TN multiply-adds into its accumulators (an outer
product). Each value read from shared memory is used TN (or TM) times: that reuse is the
whole point. Thread (ty, tx) owns rows ``ty + i * threads_y`` and columns
``tx + j * threads_x``: interleaved, so the 32 threads of a warp read consecutive shared
words.

B is indexed as ``b[g, k, n]``: a grouped GEMM's weights (chapter 11: one matrix per
expert g); a plain GEMM passes its B as a group of one (``b.view(1, K, N)``, g = 0), which
the compiler folds away.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from numba import cuda, float32, int32

from .. import runtime

__all__ = ["RegisterTiling", "make_core", "inline_device"]


def inline_device(fn):
    """``cuda.jit(device=True, forceinline=True)``: a device function inlined into every
    kernel that calls it (the simulator's jit has no ``forceinline``: Python inlines nothing)."""
    if runtime.ON_GPU:
        return cuda.jit(device=True, forceinline=True)(fn)
    return cuda.jit(device=True)(fn)


@dataclass(frozen=True)
class RegisterTiling:
    """Shape of a register-tiled block: a ``bm`` x ``bn`` output tile, ``bk`` along K per
    step, ``tm`` x ``tn`` outputs per thread. The thread grid's sides (bm // tm, bn // tn)
    must be powers of two, and each thread must load whole elements of each tile."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    a_pad: int = 4

    def __post_init__(self):
        for name in ("bm", "bn", "bk", "tm", "tn"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"tm must divide bm and tn divide bn, got {self}")
        ty, tx = self.bm // self.tm, self.bn // self.tn
        if ty & (ty - 1) or tx & (tx - 1):
            raise ValueError(f"the thread grid ({ty} x {tx}) must have power-of-two sides, got {self}")
        if self.threads > 1024:
            raise ValueError(f"{self.threads} threads per block: at most 1024")
        if (self.bm * self.bk) % self.threads or (self.bk * self.bn) % self.threads:
            raise ValueError(f"the {self.threads} threads must share the {self.bm}x{self.bk} and "
                             f"{self.bk}x{self.bn} tiles evenly, got {self}")

    @property
    def threads_y(self) -> int:
        return self.bm // self.tm

    @property
    def threads_x(self) -> int:
        return self.bn // self.tn

    @property
    def x_shift(self) -> int:
        """tid >> x_shift == tid // threads_x."""
        return self.threads_x.bit_length() - 1

    @property
    def threads(self) -> int:
        return self.threads_y * self.threads_x

    @property
    def a_loads(self) -> int:
        """Elements of the A tile (bm x bk) each thread loads per step."""
        return self.bm * self.bk // self.threads

    @property
    def b_loads(self) -> int:
        """Elements of the B tile (bk x bn) each thread loads per step."""
        return self.bk * self.bn // self.threads

    @property
    def a_row(self) -> int:
        """Floats per row of the transposed A tile (bm plus the padding)."""
        return self.bm + self.a_pad

    @property
    def shared_bytes(self) -> int:
        """Static shared memory of one stage (A tile + B tile), in bytes."""
        return 4 * self.bk * (self.a_row + self.bn)

    def __str__(self) -> str:
        return f"{self.bm}x{self.bn}x{self.bk}, {self.tm}x{self.tn} per thread"


def make_core(cfg: RegisterTiling) -> ModuleType:
    """The device functions of a register-tiled kernel of shape ``cfg``: its constants are
    frozen into them (numba compiles closure variables as constants).

    They come back as attributes of a small module object, so that a kernel can call
    ``core.multiply(...)``: numba types a module's attributes when it compiles (as it does
    ``math.exp``), but cannot type a ``SimpleNamespace`` at all, a failure that the
    simulator (plain Python) never shows."""
    BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
    THREADS_Y, THREADS_X, X_SHIFT = cfg.threads_y, cfg.threads_x, cfg.x_shift
    THREADS, A_LOADS, B_LOADS = cfg.threads, cfg.a_loads, cfg.b_loads

    @inline_device
    def thread_xy(tid):
        # Masks, not // and %: numba must treat any signed index as possibly negative
        # (Python's a[-1]) and adds a wrap-around fix-up to every shared-memory read. A
        # value masked with a positive constant is provably in range, so the compiler drops
        # the fix-ups and folds each read's i * THREADS_Y offset into the load instruction:
        # about a third fewer instructions in the inner loop, 2.5x the speed (lecture 11).
        return tid & (THREADS_X - 1), (tid >> X_SHIFT) & (THREADS_Y - 1)

    @inline_device
    def zero(acc):
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = float32(0.0)

    @inline_device
    def load_a(a_t, a, row0, row_end, k0, K, tid):
        """a[row0 : row0 + BM, k0 : k0 + BK] into a_t transposed, zeros past row_end and K."""
        for s in range(A_LOADS):             # consecutive threads: consecutive k of a row
            l = tid + s * THREADS
            m = l // BK
            kk = l % BK
            row = row0 + m
            v = float32(0.0)
            if row < row_end and k0 + kk < K:
                v = a[row, k0 + kk]
            a_t[kk, m] = v

    @inline_device
    def load_b(b_t, b, g, k0, K, col0, N, tid):
        """b[g, k0 : k0 + BK, col0 : col0 + BN] into b_t, zeros past K and N."""
        for s in range(B_LOADS):             # consecutive threads: consecutive columns
            l = tid + s * THREADS
            kk = l // BN
            n = l % BN
            v = float32(0.0)
            if k0 + kk < K and col0 + n < N:
                v = b[g, k0 + kk, col0 + n]
            b_t[kk, n] = v

    @inline_device
    def multiply(a_t, b_t, a_reg, b_reg, acc, tx, ty):
        """acc += (the staged A tile) @ (the staged B tile), this thread's micro-tile."""
        # An int32 counter from 0, not range(BK): numba's range() counts with an int64 that
        # the compiler cannot prove non-negative, so every step paid a wrap-around fix-up
        # on the row index kk of both tiles (sm_90 SASS: 103 instructions a step for 64
        # FFMAs and 16 shared loads); with this counter it is 87, 7 of them loop overhead.
        kk = int32(0)
        while kk < BK:
            for i in range(TM):
                a_reg[i] = a_t[kk, ty + i * THREADS_Y]
            for j in range(TN):
                b_reg[j] = b_t[kk, tx + j * THREADS_X]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += a_reg[i] * b_reg[j]
            kk += int32(1)

    core = ModuleType(f"{__name__}.core_{cfg.bm}x{cfg.bn}x{cfg.bk}_{cfg.tm}x{cfg.tn}_pad{cfg.a_pad}",
                      f"the register-tiling core for {cfg}")
    core.__dict__.update(cfg=cfg, thread_xy=thread_xy, zero=zero, load_a=load_a, load_b=load_b,
                         multiply=multiply)
    return core
