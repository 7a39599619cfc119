"""numba.cuda kernels of the MoE layer, with the signatures of :mod:`gpulab.moe.torch_impl`.

The multi-kernel path (what most MoE libraries do, one launch per step)::

    router_topk_kernel      one thread per token: softmax, top-k, renormalise
    histogram_kernel        assignments per expert (shared-memory histogram + atomics)
    offsets_kernel          one block: exclusive prefix sums of kept rows and of row tiles
    scatter_kernel          one block per expert: stable positions by a block prefix sum
    tile_table_kernel       which (expert, first row) each tile of the grouped GEMM owns
    gather_rows_kernel      token rows into expert order
    grouped_gemm_kernel     every expert's product in ONE launch, blocks mapped by a tile table:
                            register-tiled (BM x BN block tile, TM x TN per thread)
    grouped_gemm_naive_kernel  the first version: TILE x TILE threads, one output each
    combine_kernel          out[t] = sum_j w[t, j] * y[slot_of[t, j]]

and the fused path in the spirit of FlashMoE (arXiv 2506.04667): ``fused_moe_kernel``
is one persistent kernel whose blocks pull tasks from a queue (an atomic counter) and
do dispatch (rows gathered while loading), both expert GEMMs and the weighted combine
(atomic adds into the output) without going back to the host.

Two grouped GEMMs, both FP32. ``grouped_gemm_naive_kernel`` is the classic shared-memory
tiling (a TILE x TILE block of threads, one output per thread): easy to read, but every
multiply-add costs two shared-memory loads. ``grouped_gemm_kernel`` is the standard
register-tiled SGEMM: a block of 256 threads computes a BM x BN output tile, each thread a
TM x TN micro-tile held in registers, so each value read from shared memory is used TM or
TN times. ``moe_ffn`` picks it when experts get enough rows to fill its large tiles (on
the H200 it was slower than the naive kernel below about 64 rows per expert). The fused
persistent kernel keeps the simple tiling.
"""
from __future__ import annotations

import math

import torch
from numba import cuda, float32, int32

from .. import runtime
from ..gemm.tiling import RegisterTiling, make_core
from ..launch import kernel
from . import torch_impl as ref
from .torch_impl import Permutation, Routing

__all__ = [
    "route", "permute", "gather_rows", "grouped_gemm", "combine", "moe_ffn", "moe_ffn_fused",
    "grouped_gemm_naive", "gemm_tiles", "TILE", "BM", "BN", "BK", "TM", "TN", "MAX_TOPK", "MAX_EXPERTS",
]

#: side of a GEMM tile (threads per block = TILE * TILE); small under the simulator,
#: where every thread is a Python thread
TILE = runtime.pick(4, 16)
#: threads of the one-block scans (prefix sums); a power of two
SCAN_THREADS = runtime.pick(16, 256)
#: the largest top-k and expert count the kernels accept (sizes of shared arrays)
MAX_TOPK = 8
MAX_EXPERTS = 1024
#: threads per block of the element-wise kernels
BLOCK = runtime.pick(32, 256)

# the register-tiled grouped GEMM, on the course's register-tiling core
# (gpulab.gemm.tiling, shared with chapter 02's kernels): a block computes a BM x BN output
# tile in steps of BK along K; its (BM // TM) x (BN // TN) threads each own a TM x TN
# micro-tile. On a GPU: 128 x 128 x 8 with 8 x 8 per thread = 256 threads; the simulator
# runs the same code with 16 x 16 x 4 and 4 x 4 per thread = 16 threads.
TILING = RegisterTiling(bm=runtime.pick(16, 128), bn=runtime.pick(16, 128), bk=runtime.pick(4, 8),
                        tm=runtime.pick(4, 8), tn=runtime.pick(4, 8))
_core = make_core(TILING)
BM, BN, BK, TM, TN = TILING.bm, TILING.bn, TILING.bk, TILING.tm, TILING.tn
#: thread rows and columns of a block (thread (ty, tx) owns rows ty + i * THREADS_Y and
#: columns tx + j * THREADS_X: interleaved, so a warp reads consecutive shared words)
THREADS_Y, THREADS_X = TILING.threads_y, TILING.threads_x
GEMM_THREADS = TILING.threads
#: floats per row of the transposed A tile (BM plus padding: the transposing stores hit distinct banks)
A_ROW = TILING.a_row


def _blocks(n: int, per: int) -> int:
    return max(1, math.ceil(n / per))


def _on_device(t: torch.Tensor, name: str) -> None:
    if t.device.type != runtime.device.type:
        raise ValueError(f"{name} is on {t.device}; the kernels need tensors on {runtime.device} "
                         "(use .to(gpulab.device))")


# ------------------------------------------------------------------------ routing

@kernel
def router_topk_kernel(logits, k, probs, topk_idx, topk_weight):
    """Thread t: probs[t] = softmax(logits[t]); top-k by repeated arg-max; renormalise."""
    t = cuda.grid(1)
    if t >= logits.shape[0]:
        return
    E = logits.shape[1]
    m = logits[t, 0]
    for e in range(1, E):
        m = max(m, logits[t, e])             # subtract the max: exp never overflows
    total = float32(0.0)
    for e in range(E):
        p = math.exp(logits[t, e] - m)
        probs[t, e] = p
        total += p
    inv = float32(1.0) / total
    for e in range(E):
        probs[t, e] *= inv
    picked = float32(0.0)
    for j in range(k):                       # k is tiny (<= MAX_TOPK): k passes over E
        best = -1
        best_p = float32(0.0)
        for e in range(E):
            taken = False
            for i in range(j):
                if topk_idx[t, i] == e:
                    taken = True
            p = probs[t, e]
            if not taken and (best < 0 or p > best_p):
                best = e
                best_p = p
        topk_idx[t, j] = best
        topk_weight[t, j] = best_p
        picked += best_p
    for j in range(k):
        topk_weight[t, j] /= picked          # renormalised: the k weights sum to 1


@kernel
def histogram_kernel(topk_idx, counts):
    """counts[e] += number of assignments routed to e (counts must start at zero).

    Each block counts its share in shared memory first, so the global atomics number
    E per block instead of one per assignment.
    """
    local = cuda.shared.array(MAX_EXPERTS, int32)
    tid = cuda.threadIdx.x
    E = counts.size
    for e in range(tid, E, cuda.blockDim.x):
        local[e] = 0
    cuda.syncthreads()
    k = topk_idx.shape[1]
    n = topk_idx.shape[0] * k
    a = cuda.grid(1)
    stride = cuda.gridDim.x * cuda.blockDim.x
    while a < n:
        cuda.atomic.add(local, topk_idx[a // k, a % k], 1)
        a += stride
    cuda.syncthreads()
    for e in range(tid, E, cuda.blockDim.x):
        if local[e] > 0:
            cuda.atomic.add(counts, e, local[e])


@kernel
def offsets_kernel(counts, capacity, tile_rows, offsets, tile_offsets):
    """One block: exclusive prefix sums of kept rows and of row tiles per expert.

    kept[e] = min(counts[e], capacity) (capacity < 0: no limit), tiles[e] =
    ceil(kept[e] / tile_rows). offsets and tile_offsets have E + 1 entries; the last is
    the total. Experts are scanned SCAN_THREADS at a time (Hillis-Steele in shared
    memory), the running total carried from chunk to chunk.
    """
    rows = cuda.shared.array(SCAN_THREADS, int32)
    tiles = cuda.shared.array(SCAN_THREADS, int32)
    tid = cuda.threadIdx.x
    E = counts.size
    carry_rows = 0
    carry_tiles = 0
    for base in range(0, E, SCAN_THREADS):
        e = base + tid
        kept = 0
        if e < E:
            kept = counts[e]
            if capacity >= 0 and kept > capacity:
                kept = capacity
        my_tiles = (kept + tile_rows - 1) // tile_rows
        rows[tid] = kept
        tiles[tid] = my_tiles
        cuda.syncthreads()
        step = 1
        while step < SCAN_THREADS:
            add_rows = 0
            add_tiles = 0
            if tid >= step:
                add_rows = rows[tid - step]
                add_tiles = tiles[tid - step]
            cuda.syncthreads()               # all reads of this step before any write
            rows[tid] += add_rows
            tiles[tid] += add_tiles
            cuda.syncthreads()
            step *= 2
        if e < E:                            # inclusive scan minus own value = exclusive
            offsets[e] = carry_rows + rows[tid] - kept
            tile_offsets[e] = carry_tiles + tiles[tid] - my_tiles
        carry_rows += rows[SCAN_THREADS - 1]
        carry_tiles += tiles[SCAN_THREADS - 1]
        cuda.syncthreads()                   # everyone read the totals before the next chunk
    if tid == 0:
        offsets[E] = carry_rows
        tile_offsets[E] = carry_tiles


@kernel
def scatter_kernel(topk_idx, offsets, capacity, sorted_assignment, slot_of):
    """Block e: give every assignment routed to e its row, in token order (stable).

    The block walks all assignments SCAN_THREADS at a time; a prefix sum of the flags
    "routed to e" gives each one its rank among e's assignments. Ranks past the capacity
    are dropped (slot -1). Stable order makes the result deterministic and equal to
    torch's stable argsort; the price is that every block reads every assignment.
    """
    flags = cuda.shared.array(SCAN_THREADS, int32)
    e = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    k = topk_idx.shape[1]
    n = topk_idx.shape[0] * k
    start = offsets[e]
    seen = 0                                 # assignments of e in earlier chunks
    for base in range(0, n, SCAN_THREADS):
        a = base + tid
        mine = 0
        if a < n and topk_idx[a // k, a % k] == e:
            mine = 1
        flags[tid] = mine
        cuda.syncthreads()
        step = 1
        while step < SCAN_THREADS:
            add = 0
            if tid >= step:
                add = flags[tid - step]
            cuda.syncthreads()
            flags[tid] += add
            cuda.syncthreads()
            step *= 2
        if mine == 1:
            rank = seen + flags[tid] - 1
            if capacity < 0 or rank < capacity:
                sorted_assignment[start + rank] = a
                slot_of[a // k, a % k] = start + rank
            else:
                slot_of[a // k, a % k] = -1
        seen += flags[SCAN_THREADS - 1]
        cuda.syncthreads()


@kernel
def tile_table_kernel(offsets, tile_offsets, tile_rows, tile_group, tile_row_start):
    """Thread t: which expert owns GEMM row tile t, and its first row (-1: no work).

    Tiles are ``tile_rows`` rows high (TILE for the naive and fused kernels, BM for the
    register-tiled GEMM); tile_offsets must come from the same tile height.

    Expert e owns tiles tile_offsets[e]:tile_offsets[e + 1]; a binary search finds the
    last e with tile_offsets[e] <= t (empty experts own no tile and are skipped).
    """
    t = cuda.grid(1)
    if t >= tile_group.size:
        return
    E = offsets.size - 1
    if t >= tile_offsets[E]:
        tile_group[t] = -1
        tile_row_start[t] = 0
        return
    lo = 0
    hi = E - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tile_offsets[mid] <= t:
            lo = mid
        else:
            hi = mid - 1
    tile_group[t] = lo
    tile_row_start[t] = offsets[lo] + (t - tile_offsets[lo]) * tile_rows


@kernel
def gather_rows_kernel(x, sorted_assignment, k, offsets, out):
    """out[row, c] = x[sorted_assignment[row] // k, c] for the kept rows."""
    row, c = cuda.grid(2)
    E = offsets.size - 1
    if row < offsets[E] and c < x.shape[1]:
        out[row, c] = x[sorted_assignment[row] // k, c]


# --------------------------------------------------------------------- the GEMMs

@cuda.jit(device=True)
def _silu(v):
    return v / (float32(1.0) + math.exp(-v))


@kernel
def grouped_gemm_naive_kernel(a, w, offsets, tile_group, tile_row_start, silu, out):
    """Block (tile, col_tile): out[rows] = act(a[rows] @ w[e]) for the tile's TILE rows.

    One launch covers every expert: blockIdx.x indexes the tile table, so groups of any
    size get ceil(rows / TILE) tiles and no block computes rows of two experts.
    """
    a_tile = cuda.shared.array((TILE, TILE), float32)
    w_tile = cuda.shared.array((TILE, TILE), float32)
    g = tile_group[cuda.blockIdx.x]
    if g < 0:
        return                               # a spare tile: the whole block leaves
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    row = tile_row_start[cuda.blockIdx.x] + ty
    row_end = offsets[g + 1]
    col = cuda.blockIdx.y * TILE + tx
    K = a.shape[1]
    N = w.shape[2]
    acc = float32(0.0)
    for k0 in range(0, K, TILE):
        a_tile[ty, tx] = a[row, k0 + tx] if (row < row_end and k0 + tx < K) else float32(0.0)
        w_tile[ty, tx] = w[g, k0 + ty, col] if (k0 + ty < K and col < N) else float32(0.0)
        cuda.syncthreads()
        for i in range(TILE):
            acc += a_tile[ty, i] * w_tile[i, tx]
        cuda.syncthreads()                   # done reading before the next tiles land
    if row < row_end and col < N:
        out[row, col] = _silu(acc) if silu else acc


@kernel
def grouped_gemm_kernel(a, w, offsets, tile_group, tile_row_start, silu, out):
    """Register-tiled: block (tile, col_tile) computes out[BM rows, BN cols] = act(a @ w[e]).

    The tile table has BM-row tiles (:func:`gemm_tiles`). Per step of BK along K, the 256
    threads stage a BM x BK tile of a (stored transposed: a_t[k, m]) and a BK x BN tile of
    w[e] in shared memory (TILING.a_loads and .b_loads elements each); then, for each of the BK
    k's, every thread reads TM values of a column of a_t and TN values of a row of w_t
    into registers and does TM * TN multiply-adds into its accumulators (an outer product).
    Thread (ty, tx) owns rows ty + i * THREADS_Y and columns tx + j * THREADS_X. The loads
    and the inner loop are the course's register-tiling core (:mod:`gpulab.gemm.tiling`).
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
    tx, ty = _core.thread_xy(tid)            # masks, not // and % (gpulab.gemm.tiling says why)
    row0 = tile_row_start[cuda.blockIdx.x]
    row_end = offsets[g + 1]
    col0 = cuda.blockIdx.y * BN
    K = a.shape[1]
    N = w.shape[2]
    _core.zero(acc)
    for k0 in range(0, K, BK):
        _core.load_a(a_t, a, row0, row_end, k0, K, tid)
        _core.load_b(w_t, w, g, k0, K, col0, N, tid)
        cuda.syncthreads()
        _core.multiply(a_t, w_t, a_reg, w_reg, acc, tx, ty)
        cuda.syncthreads()                   # done reading before the next tiles land
    for i in range(TM):
        row = row0 + ty + i * THREADS_Y
        if row < row_end:
            for j in range(TN):
                col = col0 + tx + j * THREADS_X
                if col < N:
                    out[row, col] = _silu(acc[i, j]) if silu else acc[i, j]


@kernel
def combine_kernel(y_sorted, slot_of, topk_weight, out):
    """out[t, c] = sum_j topk_weight[t, j] * y_sorted[slot_of[t, j], c] (slot -1: dropped)."""
    t, c = cuda.grid(2)
    if t >= out.shape[0] or c >= out.shape[1]:
        return
    acc = float32(0.0)
    for j in range(slot_of.shape[1]):        # fixed order: the sum is deterministic
        s = slot_of[t, j]
        if s >= 0:
            acc += topk_weight[t, j] * y_sorted[s, c]
    out[t, c] = acc


@kernel
def fused_moe_kernel(x, w1, w2, sorted_assignment, topk_weight, offsets, tile_offsets,
                     tile_group, tile_row_start, hidden, queue, tile_done, out):
    """A persistent FlashMoE-style kernel: blocks pull tasks until the queue is empty.

    Tasks, in queue order: first every (row tile, column tile) of H = silu(X W1[e])
    (rows gathered from x while loading: the dispatch), then every (row tile, column
    tile) of Y = H W2[e], whose epilogue adds weight * Y straight into out[token] with
    atomics (the combine). A Y task waits (spins) until all H tasks of its row tile are
    done (tile_done counts them): each H task writes its tile, fences (release) and counts;
    the Y task's leader reads the count until complete, then fences (acquire) before the
    block reads H. No deadlock: all H tasks are handed out before any Y
    task, to blocks that are running and never wait. out, queue and tile_done start at 0.
    """
    a_tile = cuda.shared.array((TILE, TILE), float32)
    w_tile = cuda.shared.array((TILE, TILE), float32)
    task = cuda.shared.array(1, int32)
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    leader = tx == 0 and ty == 0
    E = offsets.size - 1
    k = topk_weight.shape[1]
    H = x.shape[1]
    F = w1.shape[2]                          # hidden may have more (padding) columns
    row_tiles = tile_offsets[E]
    col_tiles_h = (F + TILE - 1) // TILE     # column tiles of the hidden activations
    col_tiles_y = (H + TILE - 1) // TILE     # column tiles of the output
    first_tasks = row_tiles * col_tiles_h
    all_tasks = first_tasks + row_tiles * col_tiles_y
    while True:
        if leader:
            task[0] = cuda.atomic.add(queue, 0, 1)
        cuda.syncthreads()
        q = task[0]
        cuda.syncthreads()                   # all read q before the leader takes another
        if q >= all_tasks:
            return
        second = q >= first_tasks
        if second:
            q -= first_tasks
            r = q // col_tiles_y
            col = (q % col_tiles_y) * TILE + tx
            if leader:
                while cuda.atomic.add(tile_done, r, 0) < col_tiles_h:
                    pass                     # the H tiles of this row tile are in flight
                # acquire: the other half of the producers' threadfence-then-count. Without a
                # fence after the flag read, the memory model lets this block's plain loads of
                # hidden be performed before the flag was seen (issued early, or served from a
                # stale L1 line), so they could read H from before it was written
                cuda.threadfence()
            cuda.syncthreads()               # the leader's acquire, passed on to the whole block
        else:
            r = q // col_tiles_h
            col = (q % col_tiles_h) * TILE + tx
        g = tile_group[r]
        row = tile_row_start[r] + ty
        live = row < offsets[g + 1]
        assignment = sorted_assignment[row] if live else 0
        token = assignment // k
        acc = float32(0.0)
        if not second:                       # H[row, col] = silu(x[token] . w1[g][:, col])
            for k0 in range(0, H, TILE):
                a_tile[ty, tx] = x[token, k0 + tx] if (live and k0 + tx < H) else float32(0.0)
                w_tile[ty, tx] = w1[g, k0 + ty, col] if (k0 + ty < H and col < F) else float32(0.0)
                cuda.syncthreads()
                for i in range(TILE):
                    acc += a_tile[ty, i] * w_tile[i, tx]
                cuda.syncthreads()
            if live and col < F:
                hidden[row, col] = _silu(acc)
            cuda.threadfence()               # H visible to every block before we count it
            cuda.syncthreads()
            if leader:
                cuda.atomic.add(tile_done, r, 1)
        else:                                # out[token, col] += w * (H[row] . w2[g][:, col])
            for k0 in range(0, F, TILE):
                a_tile[ty, tx] = hidden[row, k0 + tx] if (live and k0 + tx < F) else float32(0.0)
                w_tile[ty, tx] = w2[g, k0 + ty, col] if (k0 + ty < F and col < H) else float32(0.0)
                cuda.syncthreads()
                for i in range(TILE):
                    acc += a_tile[ty, i] * w_tile[i, tx]
                cuda.syncthreads()
            if live and col < H:
                cuda.atomic.add(out, (token, col), topk_weight[token, assignment % k] * acc)


# ------------------------------------------------------------------- public API

def route(logits: torch.Tensor, k: int) -> Routing:
    """:func:`gpulab.moe.torch_impl.route` by kernels (the loss is formed in torch)."""
    ref.validate_routing_inputs(logits, k)
    _on_device(logits, "logits")
    if k > MAX_TOPK:
        raise ValueError(f"k={k} is larger than the kernels' MAX_TOPK={MAX_TOPK}")
    T, E = logits.shape
    if E > MAX_EXPERTS:
        raise ValueError(f"{E} experts is more than the kernels' MAX_EXPERTS={MAX_EXPERTS}")
    logits = logits.contiguous()
    probs = torch.empty_like(logits)
    topk_idx = torch.empty(T, k, dtype=torch.int32, device=logits.device)
    topk_weight = torch.empty(T, k, dtype=torch.float32, device=logits.device)
    router_topk_kernel[_blocks(T, BLOCK), BLOCK](logits, k, probs, topk_idx, topk_weight)
    counts = _histogram(topk_idx, E)
    return Routing(topk_idx, topk_weight, probs, counts, ref.load_balancing_loss(probs, counts))


def _histogram(topk_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    counts = torch.zeros(num_experts, dtype=torch.int32, device=topk_idx.device)
    n = topk_idx.numel()
    blocks = min(_blocks(n, BLOCK), runtime.pick(4, 1024))
    histogram_kernel[blocks, BLOCK](topk_idx, counts)
    return counts


def permute(topk_idx: torch.Tensor, num_experts: int, capacity: int | None = None,
            validate: bool = True) -> Permutation:
    """:func:`gpulab.moe.torch_impl.permute` by kernels, plus the GEMM tile table.

    ``validate=False`` skips the range check of the expert ids (it reads them back to
    the host); out-of-range ids then give garbage, not an error.
    """
    if validate:
        ref.validate_topk(topk_idx, num_experts)
    _on_device(topk_idx, "topk_idx")
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"{num_experts} experts is more than MAX_EXPERTS={MAX_EXPERTS}")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
    topk_idx = topk_idx.to(torch.int32).contiguous()
    T, k = topk_idx.shape
    dev = topk_idx.device
    cap = -1 if capacity is None else int(capacity)
    counts = _histogram(topk_idx, num_experts)
    offsets = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
    tile_offsets = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
    offsets_kernel[1, SCAN_THREADS](counts, cap, TILE, offsets, tile_offsets)
    sorted_assignment = torch.full((T * k,), -1, dtype=torch.int32, device=dev)
    slot_of = torch.empty(T, k, dtype=torch.int32, device=dev)
    scatter_kernel[num_experts, SCAN_THREADS](topk_idx, offsets, cap, sorted_assignment, slot_of)
    # at most floor(T k / TILE) full tiles plus one partial tile per expert: no host sync
    max_tiles = (T * k) // TILE + num_experts
    tile_group = torch.empty(max_tiles, dtype=torch.int32, device=dev)
    tile_row_start = torch.empty(max_tiles, dtype=torch.int32, device=dev)
    tile_table_kernel[_blocks(max_tiles, BLOCK), BLOCK](offsets, tile_offsets, TILE, tile_group,
                                                        tile_row_start)
    dropped = 0 if capacity is None else int((slot_of < 0).sum())
    return Permutation(counts, offsets, sorted_assignment, slot_of, dropped, k,
                       tile_offsets, tile_group, tile_row_start)


def gather_rows(x: torch.Tensor, perm: Permutation) -> torch.Tensor:
    """:func:`gpulab.moe.torch_impl.gather_rows` by a kernel."""
    _on_device(x, "x")
    R = perm.sorted_assignment.numel()
    out = torch.zeros(R, x.shape[1], dtype=x.dtype, device=x.device)
    grid = (_blocks(R, TILE), _blocks(x.shape[1], TILE))
    gather_rows_kernel[grid, (TILE, TILE)](x.contiguous(), perm.sorted_assignment, perm.k, perm.offsets, out)
    return out


def _need_tiles(perm: Permutation) -> None:
    if perm.tile_group is None:
        raise ValueError("this Permutation has no tile table: make it with gpulab.moe.kernels.permute")


def _check_gemm_inputs(a, w, perm, activation) -> None:
    ref._check_activation(activation)
    _need_tiles(perm)
    for name, t in (("a", a), ("w", w)):
        _on_device(t, name)
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
    if a.dim() != 2 or w.dim() != 3 or a.shape[1] != w.shape[1]:
        raise ValueError(f"a must be (R, K) and w (E, K, N) with the same K, got "
                         f"{tuple(a.shape)} and {tuple(w.shape)}")
    if w.shape[0] != perm.offsets.numel() - 1:
        raise ValueError(f"w has {w.shape[0]} experts but the permutation has {perm.offsets.numel() - 1}")


def gemm_tiles(perm: Permutation, tile_rows: int = BM) -> tuple[torch.Tensor, torch.Tensor]:
    """The tile table for row tiles of ``tile_rows`` rows: (tile_group, tile_row_start).

    :func:`permute` builds the table for TILE-row tiles (the naive and fused kernels); the
    register-tiled GEMM needs BM-row tiles. Same kernels, no host sync: the kept rows per
    expert come from the offsets, the scan kernel gives the tile offsets, and the grid is
    sized by the bound ``rows // tile_rows + E``.
    """
    _need_tiles(perm)
    E = perm.offsets.numel() - 1
    dev = perm.offsets.device
    kept = (perm.offsets[1:] - perm.offsets[:-1]).to(torch.int32)
    row_offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    tile_offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    offsets_kernel[1, SCAN_THREADS](kept, -1, tile_rows, row_offsets, tile_offsets)
    max_tiles = perm.sorted_assignment.numel() // tile_rows + E
    tile_group = torch.empty(max_tiles, dtype=torch.int32, device=dev)
    tile_row_start = torch.empty(max_tiles, dtype=torch.int32, device=dev)
    tile_table_kernel[_blocks(max_tiles, BLOCK), BLOCK](perm.offsets, tile_offsets, tile_rows, tile_group,
                                                        tile_row_start)
    return tile_group, tile_row_start


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, perm: Permutation, activation: str = "none",
                 out: torch.Tensor | None = None, tiles: tuple | None = None) -> torch.Tensor:
    """:func:`gpulab.moe.torch_impl.grouped_gemm` in one launch over all experts (register-tiled).

    ``tiles``: the BM-row tile table from :func:`gemm_tiles` (made here if None; pass it
    to reuse one table for several GEMMs over the same permutation).
    """
    _check_gemm_inputs(a, w, perm, activation)
    if out is None:
        out = torch.zeros(a.shape[0], w.shape[2], dtype=a.dtype, device=a.device)
    tile_group, tile_row_start = gemm_tiles(perm) if tiles is None else tiles
    grid = (tile_group.numel(), _blocks(w.shape[2], BN))
    grouped_gemm_kernel[grid, GEMM_THREADS](a.contiguous(), w.contiguous(), perm.offsets, tile_group,
                                            tile_row_start, activation == "silu", out)
    return out


def grouped_gemm_naive(a: torch.Tensor, w: torch.Tensor, perm: Permutation, activation: str = "none",
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """The same product by the naive kernel (TILE x TILE threads, one output each)."""
    _check_gemm_inputs(a, w, perm, activation)
    if out is None:
        out = torch.zeros(a.shape[0], w.shape[2], dtype=a.dtype, device=a.device)
    grid = (perm.tile_group.numel(), _blocks(w.shape[2], TILE))
    grouped_gemm_naive_kernel[grid, (TILE, TILE)](a.contiguous(), w.contiguous(), perm.offsets, perm.tile_group,
                                                  perm.tile_row_start, activation == "silu", out)
    return out


def combine(y_sorted: torch.Tensor, slot_of: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
    """:func:`gpulab.moe.torch_impl.combine` by a kernel (one thread per output element)."""
    for name, t in (("y_sorted", y_sorted), ("slot_of", slot_of), ("topk_weight", topk_weight)):
        _on_device(t, name)
    if slot_of.shape != topk_weight.shape:
        raise ValueError(f"slot_of {tuple(slot_of.shape)} and topk_weight {tuple(topk_weight.shape)} differ")
    T = slot_of.shape[0]
    out = torch.empty(T, y_sorted.shape[1], dtype=y_sorted.dtype, device=y_sorted.device)
    grid = (_blocks(T, TILE), _blocks(y_sorted.shape[1], TILE))
    combine_kernel[grid, (TILE, TILE)](y_sorted.contiguous(), slot_of.to(torch.int32).contiguous(),
                                       topk_weight.contiguous(), out)
    return out


#: average rows per expert from which the register-tiled GEMM pays: its 128-row tiles are
#: mostly empty for small groups (H200, 2026-11-29: it won from 64 rows per expert, 1k
#: tokens x top-2 over 32 experts, and lost at 32; benchmarks/results/11_moe.md)
REGTILE_MIN_ROWS_PER_EXPERT = 64


def moe_ffn(x, w1, w2, topk_idx, topk_weight, capacity=None, validate: bool = True, gemm: str = "auto"):
    """The MoE layer by the multi-kernel path: permute, gather, 2 grouped GEMMs, combine.

    ``gemm``: "regtile" (the register-tiled kernel), "naive" (the first version), or
    "auto" (the default: register-tiled when the average expert gets at least
    ``REGTILE_MIN_ROWS_PER_EXPERT`` rows, naive below).
    """
    if gemm not in ("auto", "regtile", "naive"):
        raise ValueError(f"gemm must be 'auto', 'regtile' or 'naive', got {gemm!r}")
    if gemm == "auto":
        rows_per_expert = topk_idx.numel() / w1.shape[0]
        gemm = "regtile" if rows_per_expert >= REGTILE_MIN_ROWS_PER_EXPERT else "naive"
    if validate:
        ref.validate_experts(x, w1, w2)
        ref.validate_topk(topk_idx, w1.shape[0], topk_weight)
    perm = permute(topk_idx, w1.shape[0], capacity, validate=False)
    xs = gather_rows(x, perm)
    if gemm == "naive":
        h = grouped_gemm_naive(xs, w1, perm, "silu")
        y = grouped_gemm_naive(h, w2, perm)
    else:
        tiles = gemm_tiles(perm)             # one BM-row tile table for both products
        h = grouped_gemm(xs, w1, perm, "silu", tiles=tiles)
        y = grouped_gemm(h, w2, perm, tiles=tiles)
    return combine(y, perm.slot_of, topk_weight)


def persistent_blocks() -> int:
    """Blocks of the persistent kernel: a few per multiprocessor (2 under the simulator)."""
    if runtime.SIMULATOR:
        return 2
    return 8 * torch.cuda.get_device_properties(0).multi_processor_count


def moe_ffn_fused(x, w1, w2, topk_idx, topk_weight, capacity=None, validate: bool = True,
                  perm: Permutation | None = None, blocks: int | None = None):
    """The MoE layer with dispatch, both GEMMs and the combine in one persistent kernel.

    The routing metadata (histogram, offsets, stable scatter, tile table) comes from
    :func:`permute` (or pass ``perm``); the persistent kernel does the rest.
    """
    if validate:
        ref.validate_experts(x, w1, w2)
        ref.validate_topk(topk_idx, w1.shape[0], topk_weight)
    if perm is None:
        perm = permute(topk_idx, w1.shape[0], capacity, validate=False)
    _need_tiles(perm)
    dev = x.device
    # rows padded to 32 floats (128-byte cache lines): no line holds parts of two row tiles,
    # so a line one block cached from a finished tile can never be a stale copy of another
    padded = -(-w1.shape[2] // 32) * 32
    hidden = torch.empty(perm.sorted_assignment.numel(), padded, dtype=x.dtype, device=dev)
    queue = torch.zeros(1, dtype=torch.int32, device=dev)
    tile_done = torch.zeros(perm.tile_group.numel(), dtype=torch.int32, device=dev)
    out = torch.zeros_like(x)
    fused_moe_kernel[blocks or persistent_blocks(), (TILE, TILE)](
        x.contiguous(), w1.contiguous(), w2.contiguous(), perm.sorted_assignment, topk_weight.contiguous(),
        perm.offsets, perm.tile_offsets, perm.tile_group, perm.tile_row_start, hidden, queue, tile_done, out)
    return out
