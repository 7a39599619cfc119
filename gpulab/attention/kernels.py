"""numba.cuda kernels of chapter 04, with the signatures of :mod:`gpulab.attention.torch_impl`.

    flash_kernel_for(...)   the FlashAttention2 forward: one block per query tile, one thread
                            per query row; K/V tiles staged in padded shared memory; running
                            max m and sum l, accumulator rescaled by exp2(m_old - m_new);
                            O = acc / l and LSE = (m + log2 l) ln 2. Dense (every key tile up to
                            the causal diagonal) or block-sparse (the key blocks a table lists).
    feature kernel          phi(x) row by row (elu + 1, relu, softmax over d)
    chunk state kernel      per key chunk: h_j = phi(K_j)^T V_j (d x d) and z_j = sum phi(K_j)
    prefix kernel           exclusive prefix sums of the chunk states (causal linear attention)
    linear output kernel    O_i = (phi(q_i) H + intra-chunk part) / (phi(q_i) z + ... + 1e-5)
    sla_kernel_for(...)     SLA fused: the flash loop over a query block's critical key blocks,
                            then its marginal state H_m = H_total - sum of the critical and
                            negligible blocks' h_j (built in shared memory, R rows at a time)
                            applied to phi(q): O_s, O_l and LSE in one launch
    merge kernel            exact merge of partial (O, LSE) pairs

Tile sizes are parameters of the kernel factories (numba freezes them into the compiled
kernel): under the simulator a tile is 8 rows (every thread is a Python thread); on a GPU 64
query rows and key tiles of 64 (d <= 64) or 32 (d = 128), so the two shared tiles stay
within the 48 KiB of static shared memory. A key *block* (the block table's unit, 64 as in
SLA) is walked in *sub-tiles* that fit shared memory: FastAttention's two-level tiling.

These kernels are the course's FP32, no-tensor-core versions: one thread per query row
keeps its whole accumulator (d floats). The head-dimension loops run to the compile-time
d_max, so they unroll: at d <= 64 the row (q and acc) stays in registers (sm_90 PTX: no
local loads in the key loop); at d = 128 the 256 floats exceed the register file per thread
and live in local memory (L1). That is simple and easy to check, not the fastest layout
(FlashAttention2 splits a row's work across a warp and uses tensor cores).
"""
from __future__ import annotations

import functools
import math

import torch
from numba import cuda, float32

from .. import runtime
from ..launch import kernel
from . import torch_impl as ref
from .torch_impl import (CRITICAL, LINEAR_EPS, MARGINAL, NEGLIGIBLE, _check_block_mask, _check_causal,
                         _check_feature, _check_qkv)

__all__ = ["attention", "merge_partials", "feature_map", "linear_attention", "sla_attention",
           "flash_kernel_for", "sla_kernel_for", "tiles_for", "BLK_Q", "BLK_K", "MAX_D", "LOG2E"]

#: 1 / ln 2: exp(x) = exp2(x * LOG2E), the constant thu-ml/SLA's kernel writes as 1.4426950408889634
LOG2E = 1.4426950408889634
LN2 = math.log(2.0)
#: the largest head dimension the kernels compile for
MAX_D = 128
#: query rows per block (= threads per block) and keys per block of the block table
BLK_Q = runtime.pick(8, 64)
BLK_K = runtime.pick(8, 64)
#: rows of the marginal state SLA's kernel builds in shared memory at a time
STATE_ROWS = runtime.pick(4, 16)
_FEATURE_CODE = {"elu": 0, "relu": 1, "softmax": 2}
_CAUSAL_CODE = {None: 0, "top_left": 1, "bottom_right": 1}


def _d_max(d: int) -> int:
    """The compiled head size: the smallest of 4, 8, ..., 128 that holds d (the kernels loop
    to it, so that the loops unroll and a row stays in registers)."""
    for size in (4, 8, 16, 32, 64, MAX_D):
        if d <= size:
            return size
    raise ValueError(f"head dimension d = {d} is larger than the kernels support ({MAX_D})")


def tiles_for(d: int, blk_k: int = BLK_K) -> int:
    """Keys per shared-memory sub-tile: the whole block where two padded tiles fit 48 KiB
    (d <= 64 at 64 keys), else half of it. Under the simulator: half a block (4 keys of 8),
    so the two-level walk is exercised."""
    if runtime.SIMULATOR:
        return max(1, blk_k // 2)
    sub = blk_k
    while sub > 1 and 2 * sub * (_d_max(d) + 1) * 4 > 48 * 1024:
        sub //= 2
    return sub


# ------------------------------------------------------------------ the flash loop

def _make_tile_step(blk_q, sub, d_max):
    """The device function shared by the dense, sparse and SLA kernels: stage one key
    sub-tile in shared memory and apply the online softmax update to this thread's row.

    Every loop over the head dimension runs to the compile-time ``d_max`` (the columns past
    ``d`` are zeros in q_r, k_s and v_s, so they add nothing): the compiler then unrolls them
    and keeps ``q_r`` and ``acc`` in registers instead of local memory. Every constant is a
    float32: a bare ``0.0`` or ``-math.inf`` would turn the whole update into float64."""
    neg_inf = float32(-math.inf)

    @cuda.jit(device=True)
    def tile_step(k, v, bh, start, nk, k_s, v_s, q_r, acc, p, state, live, row, row_first, causal, offset, d):
        t = cuda.threadIdx.x
        cuda.syncthreads()                       # every thread is done with the previous tile
        for idx in range(t, sub * d_max, blk_q):  # the block loads the tile together, coalesced
            r = idx // d_max                     # d_max is a power of two: a shift
            c = idx - r * d_max
            j = start + r
            if j < nk and c < d:
                k_s[r, c] = k[bh, j, c]
                v_s[r, c] = v[bh, j, c]
            else:                                # ragged end and padding columns: zeros
                k_s[r, c] = float32(0.0)
                v_s[r, c] = float32(0.0)
        cuda.syncthreads()
        if not live:
            return
        # a mask from indices only where the tile crosses the end or the diagonal
        interior = start + sub <= nk and (causal == 0 or start + sub - 1 <= row_first + offset)
        tile_max = neg_inf
        for r in range(sub):
            s = float32(0.0)
            for c in range(d_max):
                s += q_r[c] * k_s[r, c]
            if not interior:
                j = start + r
                if j >= nk or (causal != 0 and j > row + offset):
                    s = neg_inf
            p[r] = s
            tile_max = max(tile_max, s)
        m_old = state[0]
        m_new = max(m_old, tile_max)
        if m_new == neg_inf:                     # nothing visible yet: nothing to add
            return
        alpha = math.exp2(m_old - m_new)         # 0 on the first visible tile (m_old = -inf)
        l = state[1] * alpha
        for c in range(d_max):
            acc[c] *= alpha                      # rescale what was summed under the old max
        for r in range(sub):
            e = math.exp2(p[r] - m_new)
            l += e
            for c in range(d_max):
                acc[c] += e * v_s[r, c]
        state[0] = m_new
        state[1] = l

    return tile_step


def _make_prologue_epilogue(d_max):
    ln2 = float32(LN2)

    @cuda.jit(device=True)
    def load_row(q, bh, row, live, scale_log2, q_r, acc, d):
        scale = float32(scale_log2)
        for c in range(d_max):                   # zeros past d (see tile_step)
            q_r[c] = q[bh, row, c] * scale if live and c < d else float32(0.0)   # scores in log2 units
            acc[c] = float32(0.0)

    @cuda.jit(device=True)
    def store_row(o, lse, bh, row, acc, state, d):
        l = state[1]
        if l == float32(0.0):                    # the row saw no key: O = 0, LSE = -inf (not NaN)
            for c in range(d):
                o[bh, row, c] = float32(0.0)
            lse[bh, row] = float32(-math.inf)
        else:
            inv = float32(1.0) / l
            for c in range(d_max):
                if c < d:
                    o[bh, row, c] = acc[c] * inv
            lse[bh, row] = (state[0] + math.log2(l)) * ln2

    return load_row, store_row


@functools.lru_cache(maxsize=None)
def flash_kernel_for(blk_q: int, blk_k: int, sub: int, d_max: int, sparse: bool):
    """The FlashAttention2 forward for one tiling. Launch ``[(ceil(Nq / blk_q), B*H), blk_q]``
    with ``(q, k, v, o, lse, lut, counts, scale_log2, causal, offset)``: q, k, v, o are
    ``[BH, N, d]`` float32, lse ``[BH, Nq]``; ``sparse``: query block I visits the key blocks
    ``lut[bh, I, :counts[bh, I]]`` (else every block up to the causal limit)."""
    if blk_k % sub:
        raise ValueError(f"the sub-tile ({sub}) must divide the key block ({blk_k})")
    D_PAD = d_max + 1      # one spare column: consecutive rows start in different banks
    n_sub = blk_k // sub
    tile_step = _make_tile_step(blk_q, sub, d_max)
    load_row, store_row = _make_prologue_epilogue(d_max)

    @kernel
    def flash_fwd(q, k, v, o, lse, lut, counts, scale_log2, causal, offset):
        bh, qb, t = cuda.blockIdx.y, cuda.blockIdx.x, cuda.threadIdx.x
        nq, nk, d = q.shape[1], k.shape[1], q.shape[2]
        k_s = cuda.shared.array((sub, D_PAD), float32)
        v_s = cuda.shared.array((sub, D_PAD), float32)
        q_r = cuda.local.array(d_max, float32)
        acc = cuda.local.array(d_max, float32)
        p = cuda.local.array(sub, float32)
        state = cuda.local.array(2, float32)     # running max m (log2 units) and sum l
        state[0] = -math.inf
        state[1] = 0.0
        row_first = qb * blk_q
        row = row_first + t
        live = row < nq
        load_row(q, bh, row, live, scale_log2, q_r, acc, d)
        # keys past key_end are masked for every row of this tile: those tiles are skipped
        key_end = nk
        if causal != 0:
            key_end = min(nk, min(nq, row_first + blk_q) - 1 + offset + 1)
        n_blocks = counts[bh, qb] if sparse else (key_end + blk_k - 1) // blk_k
        for b in range(n_blocks):
            kb = lut[bh, qb, b] if sparse else b
            for s in range(n_sub):
                start = kb * blk_k + s * sub
                if start < key_end:              # the same for every thread: barriers are safe
                    tile_step(k, v, bh, start, nk, k_s, v_s, q_r, acc, p, state, live, row, row_first,
                              causal, offset, d)
        if live:
            store_row(o, lse, bh, row, acc, state, d)

    return flash_fwd


def _flat(x):
    """[B, H, N, d] -> contiguous float32 [B*H, N, d] on the kernels' device."""
    return x.to(device=runtime.device, dtype=torch.float32).reshape(-1, x.shape[2], x.shape[3]).contiguous()


def _lut_from_mask(block_mask):
    """A [B, H, Mb, Nb] block table -> (lut [BH, Mb, Nb] int32 with the listed blocks first,
    counts [BH, Mb] int32)."""
    m = block_mask.to(runtime.device).bool().reshape(-1, *block_mask.shape[2:])
    counts = m.sum(-1).to(torch.int32)
    order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return order.contiguous(), counts.contiguous()


def attention(q, k, v, causal=None, scale=None, block_mask=None, blk_q=64, blk_k=64, fp64=False,
              tile_q=None, tile_k=None):
    """Twin of :func:`torch_impl.attention`, computed by the flash kernel (FP32 always;
    ``fp64`` gives float64 outputs of the FP32 computation). ``blk_q``/``blk_k`` are the
    block table's sizes (used with ``block_mask``); ``tile_q``/``tile_k`` the kernel's tile
    (default BLK_Q/BLK_K, or the table's blocks when there is one)."""
    _check_qkv(q, k, v, max_d=MAX_D)
    _check_causal(causal)
    B, H, nq, d = q.shape
    nk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if block_mask is not None:
        _check_block_mask(block_mask, q, k, blk_q, blk_k)
        tq, tk = blk_q, blk_k
        lut, counts = _lut_from_mask(block_mask)
    else:
        tq, tk = tile_q or BLK_Q, tile_k or BLK_K
        lut = torch.zeros((1, 1, 1), dtype=torch.int32, device=runtime.device)
        counts = torch.zeros((1, 1), dtype=torch.int32, device=runtime.device)
    o = torch.empty((B * H, nq, d), dtype=torch.float32, device=runtime.device)
    lse = torch.empty((B * H, nq), dtype=torch.float32, device=runtime.device)
    if nq and B * H:
        kern = flash_kernel_for(tq, tk, tiles_for(d, tk), _d_max(d), block_mask is not None)
        offset = nk - nq if causal == "bottom_right" else 0
        kern[(math.ceil(nq / tq), B * H), tq](_flat(q), _flat(k), _flat(v), o, lse, lut, counts,
                                              scale * LOG2E, _CAUSAL_CODE[causal], offset)
    out_dtype = torch.float64 if fp64 else q.dtype
    return o.reshape(B, H, nq, d).to(out_dtype), lse.reshape(B, H, nq).to(torch.float64 if fp64 else torch.float32)


# ------------------------------------------------------------------ merge

@kernel
def _merge_kernel(o_parts, lse_parts, o, lse):
    """One thread per row: LSE = log sum exp(LSE_p), O = sum exp(LSE_p - LSE) O_p."""
    row = cuda.grid(1)
    if row >= o.shape[0]:
        return
    n_parts, d = o_parts.shape[0], o.shape[1]
    m = float32(-math.inf)                       # float32 constants: no float64 arithmetic
    for p in range(n_parts):
        m = max(m, lse_parts[p, row])
    if m == float32(-math.inf):                  # empty in every part
        for c in range(d):
            o[row, c] = float32(0.0)
        lse[row] = float32(-math.inf)
        return
    total = float32(0.0)
    for p in range(n_parts):
        total += math.exp(lse_parts[p, row] - m)  # exp(-inf) = 0: an empty part weighs nothing
    log_total = m + math.log(total)
    for c in range(d):
        acc = float32(0.0)
        for p in range(n_parts):
            w = math.exp(lse_parts[p, row] - log_total)
            if w > float32(0.0):
                acc += w * o_parts[p, row, c]
        o[row, c] = acc
    lse[row] = log_total


def merge_partials(outs, lses):
    """Twin of :func:`torch_impl.merge_partials` (one thread per query row)."""
    if len(outs) != len(lses) or not outs:
        raise ValueError(f"give one LSE per output (got {len(outs)} outputs and {len(lses)} LSEs)")
    shape, d = outs[0].shape, outs[0].shape[-1]
    o_parts = torch.stack([x.to(device=runtime.device, dtype=torch.float32).reshape(-1, d) for x in outs])
    l_parts = torch.stack([x.to(device=runtime.device, dtype=torch.float32).reshape(-1) for x in lses])
    rows = o_parts.shape[1]
    o = torch.empty((rows, d), dtype=torch.float32, device=runtime.device)
    lse = torch.empty(rows, dtype=torch.float32, device=runtime.device)
    if rows:
        threads = runtime.pick(32, 128)
        _merge_kernel[math.ceil(rows / threads), threads](o_parts.contiguous(), l_parts.contiguous(), o, lse)
    return o.reshape(shape).to(outs[0].dtype), lse.reshape(lses[0].shape).to(lses[0].dtype)


# ------------------------------------------------------------------ linear attention

@kernel
def _feature_kernel(x, out, code):
    """phi of each row of x [rows, d]: 0 elu + 1, 1 relu, 2 softmax over the row."""
    row = cuda.grid(1)
    if row >= x.shape[0]:
        return
    d = x.shape[1]
    if code == 2:                                # float32 constants: no float64 arithmetic
        m = float32(-math.inf)
        for c in range(d):
            m = max(m, x[row, c])
        total = float32(0.0)
        for c in range(d):
            total += math.exp(x[row, c] - m)
        for c in range(d):
            out[row, c] = math.exp(x[row, c] - m) / total
        return
    for c in range(d):
        val = x[row, c]
        if code == 0:
            out[row, c] = val + float32(1.0) if val > float32(0.0) else math.exp(val)   # elu(x) + 1
        else:
            out[row, c] = max(val, float32(0.0))


def feature_map(x, feature="elu"):
    """Twin of :func:`torch_impl.feature_map` (one thread per row)."""
    _check_feature(feature)
    flat = x.to(device=runtime.device, dtype=torch.float32).reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0]:
        threads = runtime.pick(32, 128)
        _feature_kernel[math.ceil(flat.shape[0] / threads), threads](flat, out, _FEATURE_CODE[feature])
    return out.reshape(x.shape)


@kernel
def _chunk_state_kernel(fk, v, h, z, chunk):
    """Block (chunk, bh), thread c: h[bh, chunk, c, :] = sum_j fk[bh, j, c] v[bh, j, :] and
    z[bh, chunk, c] = sum_j fk[bh, j, c] over the chunk's keys."""
    ch, bh, c = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    n, d, dv = fk.shape[1], fk.shape[2], v.shape[2]
    if c >= d:
        return
    first = ch * chunk
    last = min(n, first + chunk)
    zc = float32(0.0)
    for j in range(first, last):
        zc += fk[bh, j, c]
    z[bh, ch, c] = zc
    for e in range(dv):
        acc = float32(0.0)
        for j in range(first, last):
            acc += fk[bh, j, c] * v[bh, j, e]
        h[bh, ch, c, e] = acc


@kernel
def _exclusive_scan_kernel(h, z, hp, zp):
    """One thread per (bh, c, e): hp[:, chunk] = sum of h over the earlier chunks (z too, by e == 0)."""
    i = cuda.grid(1)
    bhs, n_chunks, d, dv = h.shape[0], h.shape[1], h.shape[2], h.shape[3]
    if i >= bhs * d * dv:
        return
    bh = i // (d * dv)
    c = (i // dv) % d
    e = i % dv
    run = float32(0.0)
    runz = float32(0.0)
    for ch in range(n_chunks):
        hp[bh, ch, c, e] = run
        run += h[bh, ch, c, e]
        if e == 0:
            zp[bh, ch, c] = runz
            runz += z[bh, ch, c]


def _make_linear_out(d_max):
    eps = float32(LINEAR_EPS)

    @kernel
    def linear_out(fq, fk, v, hp, zp, o, chunk, causal):
        """One thread per query: the state of the earlier chunks (or of all keys) applied to
        phi(q_i), plus (causal) the keys j <= i of its own chunk, quadratically."""
        row, bh = cuda.grid(1), cuda.blockIdx.y
        n, d, dv = fq.shape[1], fq.shape[2], v.shape[2]
        if row >= n:
            return
        ch = row // chunk if causal != 0 else 0
        num = cuda.local.array(d_max, float32)
        for e in range(dv):
            num[e] = float32(0.0)
        den = float32(0.0)
        for c in range(d):
            f = fq[bh, row, c]
            den += f * zp[bh, ch, c]
            for e in range(dv):
                num[e] += f * hp[bh, ch, c, e]
        if causal != 0:
            for j in range(ch * chunk, row + 1):
                w = float32(0.0)
                for c in range(d):
                    w += fq[bh, row, c] * fk[bh, j, c]
                den += w
                for e in range(dv):
                    num[e] += w * v[bh, j, e]
        inv = float32(1.0) / (den + eps)
        for e in range(dv):
            o[bh, row, e] = num[e] * inv

    return linear_out


_linear_out_for = functools.lru_cache(maxsize=None)(_make_linear_out)


def _chunk_states(fk, v, chunk):
    bhs, n, d = fk.shape
    n_chunks = max(1, math.ceil(n / chunk))
    h = torch.zeros((bhs, n_chunks, d, v.shape[2]), dtype=torch.float32, device=runtime.device)
    z = torch.zeros((bhs, n_chunks, d), dtype=torch.float32, device=runtime.device)
    if n:
        _chunk_state_kernel[(n_chunks, bhs), d](fk, v, h, z, chunk)
    return h, z


def linear_attention(q, k, v, feature="elu", causal=False, chunk=64, fp64=False):
    """Twin of :func:`torch_impl.linear_attention`: phi by the feature kernel, chunk states
    ``h_j, z_j`` by the state kernel, (causal) their exclusive prefix sums, then one thread
    per query. Non-causal totals are the chunk states summed (torch.sum, as thu-ml/SLA sums
    its block states)."""
    _check_qkv(q, k, v, max_d=MAX_D)
    _check_feature(feature)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal linear attention needs Nq == Nk, got {q.shape[2]} and {k.shape[2]}")
    B, H, nq, d = q.shape
    fq, fk, vf = _flat(feature_map(q, feature)), _flat(feature_map(k, feature)), _flat(v)
    h, z = _chunk_states(fk, vf, chunk)
    if causal:
        hp, zp = torch.empty_like(h), torch.empty_like(z)
        total = h.shape[0] * d * d
        threads = runtime.pick(32, 128)
        _exclusive_scan_kernel[math.ceil(total / threads), threads](h, z, hp, zp)
    else:
        hp, zp = h.sum(dim=1, keepdim=True).contiguous(), z.sum(dim=1, keepdim=True).contiguous()
    o = torch.empty((B * H, nq, d), dtype=torch.float32, device=runtime.device)
    if nq:
        threads = runtime.pick(8, 64)
        _linear_out_for(_d_max(d))[(math.ceil(nq / threads), B * H), threads](fq, fk, vf, hp, zp, o, chunk,
                                                                               int(bool(causal)))
    return o.reshape(B, H, nq, d).to(torch.float64 if fp64 else torch.float32)


# ------------------------------------------------------------------ SLA, fused

@functools.lru_cache(maxsize=None)
def sla_kernel_for(blk_q: int, blk_k: int, sub: int, d_max: int, rows: int):
    """SLA's fused forward for one tiling. Launch ``[(Mb, B*H), blk_q]`` with ``(q, k, v, fq,
    hb, zb, htot, ztot, lut, n_crit, n_excl, o_s, o_l, lse, scale_log2)``: ``lut[bh, I]`` lists
    query block I's critical key blocks first (``n_crit``), then its negligible ones (up to
    ``n_excl``); ``hb, zb`` are every key block's ``h_j, z_j`` and ``htot, ztot`` their totals."""
    D_PAD = d_max + 1
    n_sub = blk_k // sub
    eps = float32(LINEAR_EPS)
    tile_step = _make_tile_step(blk_q, sub, d_max)
    load_row, store_row = _make_prologue_epilogue(d_max)

    @kernel
    def sla_fwd(q, k, v, fq, hb, zb, htot, ztot, lut, n_crit, n_excl, o_s, o_l, lse, scale_log2):
        bh, qb, t = cuda.blockIdx.y, cuda.blockIdx.x, cuda.threadIdx.x
        nq, nk, d = q.shape[1], k.shape[1], q.shape[2]
        k_s = cuda.shared.array((sub, D_PAD), float32)
        v_s = cuda.shared.array((sub, D_PAD), float32)
        h_s = cuda.shared.array((rows, D_PAD), float32)   # rows of the marginal state H_m
        z_s = cuda.shared.array(rows, float32)
        q_r = cuda.local.array(d_max, float32)
        acc = cuda.local.array(d_max, float32)
        lin = cuda.local.array(d_max, float32)
        p = cuda.local.array(sub, float32)
        state = cuda.local.array(2, float32)
        state[0] = -math.inf
        state[1] = 0.0
        row_first = qb * blk_q
        row = row_first + t
        live = row < nq
        load_row(q, bh, row, live, scale_log2, q_r, acc, d)
        # 1. exact softmax attention over the critical blocks (the sparse branch)
        for b in range(n_crit[bh, qb]):
            kb = lut[bh, qb, b]
            for s in range(n_sub):
                start = kb * blk_k + s * sub
                if start < nk:
                    tile_step(k, v, bh, start, nk, k_s, v_s, q_r, acc, p, state, live, row, row_first,
                              0, 0, d)
        if live:
            store_row(o_s, lse, bh, row, acc, state, d)
        # 2. the marginal blocks' state: totals minus the critical and negligible blocks
        for c in range(d_max):
            lin[c] = float32(0.0)
        den = float32(0.0)
        excluded = n_excl[bh, qb]
        for c0 in range(0, d, rows):
            cuda.syncthreads()
            for idx in range(t, rows * d_max, blk_q):   # columns past d: zeros (see tile_step)
                r = idx // d_max
                e = idx - r * d_max
                c = c0 + r
                if e >= d:
                    h_s[r, e] = float32(0.0)
                elif c < d:
                    val = htot[bh, c, e]
                    for b in range(excluded):
                        val -= hb[bh, lut[bh, qb, b], c, e]
                    h_s[r, e] = val
            for r in range(t, rows, blk_q):
                c = c0 + r
                if c < d:
                    val = ztot[bh, c]
                    for b in range(excluded):
                        val -= zb[bh, lut[bh, qb, b], c]
                    z_s[r] = val
            cuda.syncthreads()
            if live:
                for r in range(rows):
                    c = c0 + r
                    if c < d:
                        f = fq[bh, row, c]
                        den += f * z_s[r]
                        for e in range(d_max):
                            lin[e] += f * h_s[r, e]
        if live:
            # no marginal block: O_l = 0 exactly (thu-ml/SLA's `topk < N_BLOCKS` branch), not
            # the rounding left over from totals minus every block, divided by 1e-5
            inv = float32(1.0) / (den + eps) if excluded < hb.shape[1] else float32(0.0)
            for e in range(d_max):
                if e < d:
                    o_l[bh, row, e] = lin[e] * inv

    return sla_fwd


def _sla_tables(labels):
    """[B, H, Mb, Nb] labels -> (lut: critical blocks first, then negligible, then marginal;
    n_crit; n_excl = critical + negligible), int32 on the device."""
    lab = labels.to(runtime.device).reshape(-1, *labels.shape[2:])
    rank = torch.where(lab == CRITICAL, 0, torch.where(lab == NEGLIGIBLE, 1, 2)).to(torch.int8)
    lut = torch.argsort(rank, dim=-1, stable=True).to(torch.int32).contiguous()
    n_crit = (lab == CRITICAL).sum(-1).to(torch.int32).contiguous()
    n_excl = (n_crit + (lab == NEGLIGIBLE).sum(-1)).to(torch.int32).contiguous()
    return lut, n_crit, n_excl


def sla_attention(q, k, v, labels, feature="softmax", blk_q=64, blk_k=64, scale=None, fp64=False):
    """Twin of :func:`torch_impl.sla_attention`: phi and the per-block states by their
    kernels, their totals by torch.sum (as thu-ml/SLA), then ONE fused kernel for O_s, O_l
    and LSE."""
    _check_qkv(q, k, v, max_d=MAX_D)
    _check_feature(feature)
    _check_block_mask(labels, q, k, blk_q, blk_k)
    B, H, nq, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qf, kf, vf = _flat(q), _flat(k), _flat(v)
    fq, fk = _flat(feature_map(q, feature)), _flat(feature_map(k, feature))
    hb, zb = _chunk_states(fk, vf, blk_k)
    htot, ztot = hb.sum(dim=1).contiguous(), zb.sum(dim=1).contiguous()
    lut, n_crit, n_excl = _sla_tables(labels)
    o_s = torch.empty((B * H, nq, d), dtype=torch.float32, device=runtime.device)
    o_l = torch.empty_like(o_s)
    lse = torch.empty((B * H, nq), dtype=torch.float32, device=runtime.device)
    if nq and B * H:
        kern = sla_kernel_for(blk_q, blk_k, tiles_for(d, blk_k), _d_max(d), min(STATE_ROWS, _d_max(d)))
        kern[(math.ceil(nq / blk_q), B * H), blk_q](qf, kf, vf, fq, hb, zb, htot, ztot, lut, n_crit, n_excl,
                                                    o_s, o_l, lse, scale * LOG2E)
    out = torch.float64 if fp64 else torch.float32
    return (o_s.reshape(B, H, nq, d).to(torch.float64 if fp64 else q.dtype), o_l.reshape(B, H, nq, d).to(out),
            lse.reshape(B, H, nq).to(out))
