"""DPX: Hopper's dynamic-programming instructions, reached from numba through CUDA C++.

Hopper added instructions that fuse the max/add steps of dynamic-programming recurrences
on two 16-bit lanes at once (the Hopper paper, arXiv 2402.13499, times them): e.g.

* ``__vimax3_s16x2_relu(a, b, c)``: per 16-bit lane, max(a, b, c, 0);
* ``__viaddmax_s16x2(a, b, c)``: per 16-bit lane, max(a + b, c).

numba has no binding for them, but a numba kernel can call a CUDA C++ device function
(``cuda.declare_device`` + the kernel's ``link=[file.cu]``, compiled by NVRTC). The cell of
Smith-Waterman local alignment (linear gap penalty ``gap``) is exactly their shape:

    H[i, j] = max(0, H[i-1, j-1] + s(q_i, t_j), H[i-1, j] - gap, H[i, j-1] - gap)
    score   = max over i, j of H[i, j]

so :data:`CELL_SOURCE` computes one cell for two alignments packed in the lanes of a 32-bit
word: ``__viaddmax_s16x2(diag, subst, up - gap)`` then ``__vimax3_s16x2_relu(that, left -
gap, 0)``. :func:`packed_kernel` is the numba kernel around it: one thread scores two
(query, target) pairs. Under the simulator (no NVRTC, no DPX) the same kernel calls
:func:`cell_emulated`, the cell in Python on the two lanes, so the packing, the recurrence
and the kernel are tested against :func:`smith_waterman_reference` (numpy) without a GPU.
:func:`scalar_kernel` is the plain numba version, one pair a thread, the "without DPX" line.
"""
from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from numba import cuda, int32, uint32

import gpulab
from .. import runtime

__all__ = ["MATCH", "MISMATCH", "GAP", "MAX_TARGET", "smith_waterman_reference", "scalar_kernel", "packed_kernel",
           "cell_emulated", "CELL_SOURCE", "score_pairs", "random_pairs", "pack2", "unpack2"]

MATCH, MISMATCH, GAP = 2, -1, 2
#: the longest target a kernel row holds (its local array); queries may be any length
MAX_TARGET = 256
#: a kernel's row of H (computed here: numba's compiler needs a local array's shape as a constant)
ROW = MAX_TARGET + 1

CELL_SOURCE = r"""
// Smith-Waterman cells for two alignments in the 16-bit lanes of a 32-bit word.
// numba's calling convention: the result through the first pointer, 0 returned = no error.
extern "C" __device__ int sw_cell_dpx(unsigned int* h, unsigned int diag, unsigned int up,
                                      unsigned int left, unsigned int subst, unsigned int gap) {
    unsigned int best = __viaddmax_s16x2(diag, subst, __vsub2(up, gap));   // max(diag + s, up - gap)
    *h = __vimax3_s16x2_relu(best, __vsub2(left, gap), 0u);                 // max(best, left - gap, 0)
    return 0;
}

// The same cell without DPX: each lane by hand, as 16-bit integers.
extern "C" __device__ int sw_cell_plain(unsigned int* h, unsigned int diag, unsigned int up,
                                        unsigned int left, unsigned int subst, unsigned int gap) {
    unsigned int out = 0;
    for (int lane = 0; lane < 2; ++lane) {
        int shift = 16 * lane;
        int d = (short)(diag >> shift), u = (short)(up >> shift), l = (short)(left >> shift);
        int s = (short)(subst >> shift), g = (short)(gap >> shift);
        int v = max(max(d + s, u - g), max(l - g, 0));
        out |= ((unsigned int)v & 0xFFFFu) << shift;
    }
    *h = out;
    return 0;
}

// Throughput probes: a chain of one instruction, for instructions per clock.
extern "C" __device__ int dpx_vimax3_s16x2_relu(unsigned int* r, unsigned int a, unsigned int b, unsigned int c) {
    *r = __vimax3_s16x2_relu(a, b, c);
    return 0;
}
extern "C" __device__ int dpx_vimax3_s32_relu(int* r, int a, int b, int c) {
    *r = __vimax3_s32_relu(a, b, c);
    return 0;
}
"""


def pack2(lo: int, hi: int) -> int:
    """Two signed 16-bit values in one 32-bit word (lo in bits 0-15)."""
    return (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)


def unpack2(word: int) -> tuple[int, int]:
    def s16(v):
        return v - 0x10000 if v & 0x8000 else v
    return s16(word & 0xFFFF), s16((word >> 16) & 0xFFFF)


def cell_emulated(diag, up, left, subst, gap):
    """The DPX cell in Python, lane by lane (what the simulator runs)."""
    out = 0
    for shift in (0, 16):
        d, u, lft, s, g = (unpack2(int(v) >> shift)[0] for v in (diag, up, left, subst, gap))
        v = max(d + s, u - g, lft - g, 0)
        out |= (v & 0xFFFF) << shift
    return out


def smith_waterman_reference(queries, targets, match: int = MATCH, mismatch: int = MISMATCH,
                             gap: int = GAP) -> torch.Tensor:
    """Best local-alignment score of each (query, target) pair: int32 [pairs]. numpy, row by
    row (the row's left-to-right dependence stays a loop)."""
    q = np.asarray(torch.as_tensor(queries).cpu())
    t = np.asarray(torch.as_tensor(targets).cpu())
    scores = []
    for qa, ta in zip(q, t):
        h_prev = np.zeros(ta.size + 1, dtype=np.int64)
        best = 0
        for qi in qa:
            subst = np.where(ta == qi, match, mismatch)
            diag_or_up = np.maximum(h_prev[:-1] + subst, h_prev[1:] - gap)
            h = np.zeros_like(h_prev)
            for j in range(1, ta.size + 1):
                h[j] = max(0, diag_or_up[j - 1], h[j - 1] - gap)
            best = max(best, int(h.max()))
            h_prev = h
        scores.append(best)
    return torch.tensor(scores, dtype=torch.int32)


def random_pairs(pairs: int, query_len: int, target_len: int, generator=None, alphabet: int = 4):
    """Random DNA-like sequences (int8 symbols 0..alphabet-1), with each target carrying a
    copy of part of its query so scores are not all tiny."""
    q = torch.randint(0, alphabet, (pairs, query_len), generator=generator, dtype=torch.int8)
    t = torch.randint(0, alphabet, (pairs, target_len), generator=generator, dtype=torch.int8)
    k = min(query_len, target_len) // 2
    if k:
        t[:, :k] = q[:, :k]
    return q, t


def _validate(queries, targets, scores=None):
    if queries.dim() != 2 or targets.dim() != 2 or queries.shape[0] != targets.shape[0]:
        raise ValueError(f"queries and targets must be [pairs, length] with the same pairs, got "
                         f"{tuple(queries.shape)} and {tuple(targets.shape)}")
    if targets.shape[1] > MAX_TARGET:
        raise ValueError(f"targets may be at most MAX_TARGET={MAX_TARGET} long, got {targets.shape[1]}")
    if queries.dtype != torch.int8 or targets.dtype != torch.int8:
        raise TypeError(f"sequences are int8 symbols, got {queries.dtype} and {targets.dtype}")
    longest = queries.shape[1] * MATCH
    if longest > 32767:
        raise ValueError("a score could overflow the 16-bit lanes: queries must be shorter than 16384")


@gpulab.kernel
def scalar_kernel(queries, targets, scores):
    """One thread scores one pair: plain int32 arithmetic, no DPX."""
    p = cuda.grid(1)
    if p >= scores.shape[0]:
        return
    n_t = targets.shape[1]
    h = cuda.local.array(ROW, dtype=int32)
    for j in range(n_t + 1):
        h[j] = 0
    best = 0
    for i in range(queries.shape[1]):
        qi = queries[p, i]
        diag = 0
        left = 0
        for j in range(1, n_t + 1):
            up = h[j]
            s = MATCH if targets[p, j - 1] == qi else MISMATCH
            v = max(0, diag + s, up - GAP, left - GAP)
            diag = up
            h[j] = v
            left = v
            best = max(best, v)
    scores[p] = best


def _make_packed(cell):
    def packed(queries, targets, scores):
        """One thread scores pairs 2k and 2k+1, their cells in the two 16-bit lanes."""
        k = cuda.grid(1)
        first = 2 * k
        if first >= scores.shape[0]:
            return
        second = first + 1 if first + 1 < scores.shape[0] else first   # an odd last pair: score it twice
        n_t = targets.shape[1]
        h = cuda.local.array(ROW, dtype=uint32)
        for j in range(n_t + 1):
            h[j] = 0
        gap2 = uint32((GAP & 0xFFFF) | ((GAP & 0xFFFF) << 16))
        best_lo = 0
        best_hi = 0
        for i in range(queries.shape[1]):
            q_lo = queries[first, i]
            q_hi = queries[second, i]
            diag = uint32(0)
            left = uint32(0)
            for j in range(1, n_t + 1):
                up = h[j]
                s_lo = MATCH if targets[first, j - 1] == q_lo else MISMATCH
                s_hi = MATCH if targets[second, j - 1] == q_hi else MISMATCH
                subst = uint32((s_lo & 0xFFFF) | ((s_hi & 0xFFFF) << 16))
                v = uint32(cell(diag, up, left, subst, gap2))
                diag = up
                h[j] = v
                left = v
                best_lo = max(best_lo, int32(v & 0xFFFF))        # cells are >= 0 (the relu)
                best_hi = max(best_hi, int32(v >> 16))
        scores[first] = best_lo
        scores[second] = best_hi
    return packed


@functools.lru_cache(maxsize=None)
def _cu_file() -> str:
    """CELL_SOURCE in a file numba can link (named by its hash, written once)."""
    digest = hashlib.sha1(CELL_SOURCE.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"gpulab_dpx_{digest}.cu"
    if not path.exists():
        path.write_text(CELL_SOURCE)
    return str(path)


@functools.lru_cache(maxsize=None)
def packed_kernel(dpx: bool = True):
    """The two-pairs-a-thread kernel: on a GPU its cell is the CUDA C++ ``sw_cell_dpx``
    (``dpx=False``: ``sw_cell_plain``, the same packing without DPX); under the simulator
    :func:`cell_emulated`."""
    if runtime.ON_GPU:
        name = "sw_cell_dpx" if dpx else "sw_cell_plain"
        cell = cuda.declare_device(name, "uint32(uint32, uint32, uint32, uint32, uint32)")
        fn = _make_packed(cell)
        fn.__name__ = f"sw_packed_{'dpx' if dpx else 'plain'}"
        return gpulab.kernel(fn, link=[_cu_file()])
    fn = _make_packed(cell_emulated)
    fn.__name__ = "sw_packed_emulated"
    return gpulab.kernel(fn)


def score_pairs(queries, targets, method: str = "dpx", block: int = 64) -> torch.Tensor:
    """Scores of each pair by one of the kernels: "scalar", "dpx" or "plain" (packed)."""
    _validate(queries, targets)
    pairs = queries.shape[0]
    scores = torch.zeros(pairs, dtype=torch.int32, device=queries.device)
    if method == "scalar":
        scalar_kernel[-(-pairs // block), block](queries, targets, scores)
    elif method in ("dpx", "plain"):
        threads = -(-pairs // 2)
        packed_kernel(method == "dpx")[-(-threads // block), block](queries, targets, scores)
    else:
        raise ValueError(f"method is 'scalar', 'dpx' or 'plain', got {method!r}")
    return scores


@functools.lru_cache(maxsize=None)
def throughput_kernel(s16x2: bool = True):
    """GPU only: 4 independent chains of one DPX instruction per thread, timed by clock64
    per block (cycles[block]): instructions per clock per SM = 4 * iters * threads / cycles."""
    if not runtime.ON_GPU:
        raise RuntimeError("DPX runs on a GPU (compute capability 9.0 executes it, older ones emulate it)")
    from .intrinsics import clock64

    if s16x2:
        op = cuda.declare_device("dpx_vimax3_s16x2_relu", "uint32(uint32, uint32, uint32)")
    else:
        op = cuda.declare_device("dpx_vimax3_s32_relu", "int32(int32, int32, int32)")

    cast = uint32 if s16x2 else int32

    def probe(x, iters, out, cycles):
        t = cuda.threadIdx.x
        a0 = cast(x[t])
        a1 = cast(a0 + 1)
        a2 = cast(a0 + 2)
        a3 = cast(a0 + 3)
        b = cast(x[t] ^ 5)
        c = cast(x[t] ^ 9)
        n = int32(iters)
        k = int32(0)
        cuda.syncthreads()
        start = clock64()
        while k < n:                # int32 counter: range() over int64 adds a 64-bit count-down
            k += int32(1)
            a0 = op(a0, b, c)
            a1 = op(a1, b, c)
            a2 = op(a2, b, c)
            a3 = op(a3, b, c)
            b = cast(b + 1)
        cuda.syncthreads()
        end = clock64()
        out[cuda.grid(1)] = (a0 ^ a1) ^ (a2 ^ a3)        # stored: the chains are live
        if t == 0:
            cycles[cuda.blockIdx.x] = end - start
    probe.__name__ = f"dpx_probe_{'s16x2' if s16x2 else 's32'}"
    return gpulab.kernel(probe, link=[_cu_file()])
