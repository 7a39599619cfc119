"""Chapter 11's graded checks (gpulab.course.checks.ch11_moe) accept right answers written
apart from the solution notebook and reject wrong ones: wrong weighting (task 1), wrong
evictions (task 2), dropped or duplicated tokens, inclusive offsets, wrong segments, host
compute (task 3), tiles never taken from the queue, wrong experts or rows (task 4).
(tests/course/test_planted.py runs the planted wrong answers the module declares.)"""
import math
import re

import pytest
import torch
from numba import cuda
from numba import int32 as numba_int32

import gpulab
from gpulab.course.checks import ch11_moe as checks
from gpulab.course.feedback import TaskFailed
from gpulab.moe import kernels as K, torch_impl as R
from gpulab.moe.offload import HAND_TRACE, ExpertCache, LRUCache

# ---------------------------------------------------------- task 3: permutation


@gpulab.kernel
def _hist(topk_idx, counts):
    a = cuda.grid(1)
    k = topk_idx.shape[1]
    if a < topk_idx.shape[0] * k:
        cuda.atomic.add(counts, topk_idx[a // k, a % k], 1)


@gpulab.kernel
def _scan(counts, offsets):
    if cuda.grid(1) == 0:
        total = 0
        for e in range(counts.size):
            offsets[e] = total
            total += counts[e]
        offsets[counts.size] = total


@gpulab.kernel
def _scatter(topk_idx, offsets, cursor, sorted_assignment, slot_of):
    a = cuda.grid(1)
    k = topk_idx.shape[1]
    if a < topk_idx.shape[0] * k:
        e = topk_idx[a // k, a % k]
        row = offsets[e] + cuda.atomic.add(cursor, e, 1)
        sorted_assignment[row] = a
        slot_of[a // k, a % k] = row


def good_permute(topk_idx, E):
    """Blocks of 64 (not the solution's 32), outputs allocated with torch.empty."""
    T, k = topk_idx.shape
    dev = topk_idx.device
    counts = torch.zeros(E, dtype=torch.int32, device=dev)
    offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    cursor = torch.zeros(E, dtype=torch.int32, device=dev)
    rows = torch.empty(T * k, dtype=torch.int32, device=dev)
    slot_of = torch.empty(T, k, dtype=torch.int32, device=dev)
    blocks = math.ceil(T * k / 64)
    _hist[blocks, 64](topk_idx, counts)
    _scan[1, 1](counts, offsets)
    _scatter[blocks, 64](topk_idx, offsets, cursor, rows, slot_of)
    return counts, offsets, rows, slot_of


def test_permutation_accepts_an_atomic_kernel_solution():
    checks.check_task3(good_permute)                  # its within-expert order is not the spec's: fine
    checks.check_task3(good_permute, hidden=True)


def _spec_outputs(topk_idx, E):
    p = R.permute.__wrapped__(topk_idx, E)
    return [p.counts, p.offsets, p.sorted_assignment.clone(), p.slot_of.clone()]


TOPK = torch.tensor([[1, 0], [1, 2], [3, 1]], dtype=torch.int32)   # 4 experts, expert 0..3 used


def _with(change):
    out = _spec_outputs(TOPK, 4)
    change(out)
    return checks.permutation_problems(TOPK, 4, *out)


def _swap_within_expert_1(out):
    rows = out[2]
    lo, hi = int(out[1][1]), int(out[1][2])
    rows[lo:hi] = rows[lo:hi].flip(0)
    out[3].view(-1)[rows[lo:hi].long()] = torch.arange(lo, hi, dtype=torch.int32)


def test_permutation_problems_accepts_any_order_within_an_expert():
    assert checks.permutation_problems(TOPK, 4, *_spec_outputs(TOPK, 4)) == []
    assert _with(_swap_within_expert_1) == []


@pytest.mark.parametrize("change, words", [
    (lambda o: o.__setitem__(1, torch.cat([o[1][1:], o[1][-1:]])), "inclusive scan"),
    (lambda o: o[2].__setitem__(-1, o[2][0]), "duplicated"),
    (lambda o: o[2].__setitem__(-1, -1), "outside 0..5"),
    (lambda o: o.__setitem__(2, torch.arange(6, dtype=torch.int32)), "belong to expert"),
    (lambda o: o.__setitem__(3, torch.zeros(3, 2, dtype=torch.int32)), "slot_of[0, 0]"),
    (lambda o: o.__setitem__(0, o[0] - 1), "counts are"),
])
def test_permutation_problems_names_the_mistake(change, words):
    problems = _with(change)
    assert problems and words in "; ".join(problems), problems


def inclusive_on_the_host(topk_idx, E):
    c, o, s, sl = good_permute(topk_idx, E)
    return c, torch.cat([o[1:], o[-1:]]), s, sl


def calls_reference(topk_idx, E):
    p = R.permute(topk_idx, E)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def around_the_reference(topk_idx, E):     # the torch specification, unguarded
    return tuple(_spec_outputs(topk_idx, E))


def calls_the_package(topk_idx, E):
    p = K.permute(topk_idx, E)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def torch_shortcut(topk_idx, E):
    counts = torch.bincount(topk_idx.flatten(), minlength=E)
    return counts, counts, counts, counts


def no_kernel(topk_idx, E):
    return (torch.zeros(E, dtype=torch.int32), torch.zeros(E + 1, dtype=torch.int32),
            torch.zeros(topk_idx.numel(), dtype=torch.int32), torch.zeros_like(topk_idx))


def three_outputs(topk_idx, E):
    return good_permute(topk_idx, E)[:3]


@pytest.mark.parametrize("wrong, words", [
    (inclusive_on_the_host, "on the host"), (calls_reference, "reference"),
    (around_the_reference, "reference"), (calls_the_package, "reference"),
    (torch_shortcut, "as kernels"), (no_kernel, "launched no gpulab kernel"),
    (three_outputs, "returned 3 outputs, expected 4"), ("my_permute", "pass a callable"),
])
def test_permutation_rejects(wrong, words):
    with pytest.raises(TaskFailed, match=words):
        checks.check_task3(wrong)


# ------------------------------------------------------------ task 2: the cache

class GoodScore(ExpertCache):
    """Scores in a dict of tensors (not the solution's lists), ties by id."""

    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)
        self.alpha, self.top_p = alpha, min(top_p or experts, experts)
        self.S = {layer: [0.0] * experts for layer in range(layers)}

    def observe(self, layer, mean_probs, needed):
        p = [float(v) for v in mean_probs]
        top = set(sorted(range(self.experts), key=lambda e: -p[e])[: self.top_p])
        for e in range(self.experts):
            self.S[layer][e] = (self.alpha * p[e] if e in top else 0.0) + (1 - self.alpha) * self.S[layer][e]

    def victim(self, layer, pinned):
        options = [e for e in sorted(self.cached[layer]) if e not in pinned]
        return min(options, key=lambda e: (self.S[layer][e], e)) if options else None


def test_score_cache_accepts_a_correct_policy():
    checks.check_task2(GoodScore)
    checks.check_task2(GoodScore, hidden=True)


class NoDecay(GoodScore):
    def observe(self, layer, mean_probs, needed):
        p = [float(v) for v in mean_probs]
        top = set(sorted(range(self.experts), key=lambda e: -p[e])[: self.top_p])
        for e in top:
            self.S[layer][e] = self.alpha * p[e] + (1 - self.alpha) * self.S[layer][e]


class EvictHighest(GoodScore):
    def victim(self, layer, pinned):
        options = [e for e in sorted(self.cached[layer]) if e not in pinned]
        return max(options, key=lambda e: (self.S[layer][e], -e)) if options else None


class RaiseAll(GoodScore):                       # ignores top_p: an EMA of every probability
    def observe(self, layer, mean_probs, needed):
        for e in range(self.experts):
            self.S[layer][e] = self.alpha * float(mean_probs[e]) + (1 - self.alpha) * self.S[layer][e]


class IgnoresPinned(GoodScore):
    def victim(self, layer, pinned):
        return min(sorted(self.cached[layer]), key=lambda e: (self.S[layer][e], e))


class AlphaHalf(GoodScore):                      # the alpha argument ignored
    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity, 0.5, top_p)


class LRU(LRUCache):
    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)


@pytest.mark.parametrize("wrong, words", [
    (NoDecay, "must decay too"), (EvictHighest, "LOWEST score, not the highest"),
    (RaiseAll, "top_p is ignored"), (IgnoresPinned, "never evict one in pinned"),
    (AlphaHalf, "use the alpha argument"), (LRU, "That is LRU"),
    (GoodScore(1, 4, 2), "pass a callable"), (GoodScore.observe, "pass your class"),
])
def test_score_cache_rejects(wrong, words):
    with pytest.raises(TaskFailed, match=words):
        checks.check_task2(wrong)


def test_score_cache_replays_the_lecture_hand_trace_first():
    with pytest.raises(TaskFailed, match="the lecture's hand trace"):
        checks.check_task2(NoDecay)
    assert HAND_TRACE[0] == ([0.50, 0.30, 0.10, 0.10], [0, 1])


def test_score_cache_traces_hold_no_tie_at_the_top_p_boundary():
    # the task leaves such a tie open (either expert may be raised), so no trace may hold one;
    # the random traces draw continuous probabilities
    for trace in checks._TRACES + checks._HIDDEN_TRACES:
        for step, (probs, _) in enumerate(trace.steps):
            ranked = sorted(probs, reverse=True)
            if trace.top_p < len(probs):
                assert ranked[trace.top_p - 1] != ranked[trace.top_p], f"{trace}: step {step}"


# ------------------------------------------------------------ task 1: combine

@gpulab.kernel
def good_combine(y_sorted, slot_of, topk_weight, out):
    t, c = cuda.grid(2)
    if t < out.shape[0] and c < out.shape[1]:
        acc = 0.0
        for j in range(slot_of.shape[1]):
            s = slot_of[t, j]
            if s >= 0:
                acc += topk_weight[t, j] * y_sorted[s, c]
        out[t, c] = acc


@gpulab.kernel
def unweighted(y_sorted, slot_of, topk_weight, out):
    t, c = cuda.grid(2)
    if t < out.shape[0] and c < out.shape[1]:
        acc = 0.0
        for j in range(slot_of.shape[1]):
            if slot_of[t, j] >= 0:
                acc += y_sorted[slot_of[t, j], c]
        out[t, c] = acc


@gpulab.kernel
def swapped_weights(y_sorted, slot_of, topk_weight, out):
    t, c = cuda.grid(2)
    if t < out.shape[0] and c < out.shape[1]:
        k = slot_of.shape[1]
        acc = 0.0
        for j in range(k):
            if slot_of[t, j] >= 0:
                acc += topk_weight[t, k - 1 - j] * y_sorted[slot_of[t, j], c]
        out[t, c] = acc


@gpulab.kernel
def accumulates_into_out(y_sorted, slot_of, topk_weight, out):
    t, c = cuda.grid(2)
    if t < out.shape[0] and c < out.shape[1]:
        for j in range(slot_of.shape[1]):
            if slot_of[t, j] >= 0:
                out[t, c] += topk_weight[t, j] * y_sorted[slot_of[t, j], c]   # out was never zeroed


def test_combine_accepts_a_correct_kernel():
    checks.check_task1(good_combine)


@pytest.mark.parametrize("wrong, words", [
    (unweighted, "unweighted sum"), (swapped_weights, "weights are swapped"),
    (accumulates_into_out, "out starts as NaN"),
])
def test_combine_rejects(wrong, words):
    with pytest.raises(TaskFailed, match=words):
        checks.check_task1(wrong)


def test_combine_wants_a_kernel():
    with pytest.raises(TaskFailed, match="kernel"):
        checks.check_task1(lambda *a: None)


def test_combine_refuses_the_package_kernel():
    with pytest.raises(TaskFailed, match="package's own"):
        checks.check_task1(K.combine_kernel)


# ------------------------------------------------------------ task 4: persistent grouped GEMM

QT = checks.QUEUE_TILE


@gpulab.kernel
def dot_per_thread_persistent(a, w, offsets, tile_group, tile_row_start, queue, out):
    """Right, written apart from the solution: no shared-memory tiles, a plain dot product
    per thread, the task numbered column tile first."""
    task = cuda.shared.array(1, numba_int32)
    leader = cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0
    row_tiles = tile_group.size
    tasks = row_tiles * ((out.shape[1] + QT - 1) // QT)
    while True:
        if leader:
            task[0] = cuda.atomic.add(queue, 0, 1)
        cuda.syncthreads()
        q = task[0]
        cuda.syncthreads()
        if q >= tasks:
            return
        r = q % row_tiles
        g = tile_group[r]
        if g >= 0:
            row = tile_row_start[r] + cuda.threadIdx.y
            col = (q // row_tiles) * QT + cuda.threadIdx.x
            if row < offsets[g + 1] and col < out.shape[1]:
                acc = 0.0
                for kk in range(a.shape[1]):
                    acc += a[row, kk] * w[g, kk, col]
                out[row, col] = acc


def test_persistent_gemm_accepts_a_kernel_written_apart():
    checks.check_task4(dot_per_thread_persistent)


def test_tile_table_covers_every_row_once_and_marks_spares():
    offsets, group, start = checks.tile_table((3, 0, 6, 5), tile=4)
    assert offsets.tolist() == [0, 3, 3, 9, 14]
    assert group.tolist() == [0, 2, 2, 3, 3, -1, -1]          # 14 // 4 + 4 = 7 entries
    assert start.tolist()[:5] == [0, 3, 7, 9, 13]


def test_persistent_reference_is_the_per_expert_product():
    g = torch.Generator().manual_seed(0)
    a, w, offsets, group, start = checks._persistent_inputs(((2, 0, 3), 5, 4), g)
    out = checks.persistent_gemm_reference.__wrapped__(a, w, offsets, group, start)
    torch.testing.assert_close(out[:2], a[:2] @ w[0])
    torch.testing.assert_close(out[2:], a[2:] @ w[2])


def test_persistent_grids_are_smaller_than_the_work():
    sizes = checks.PERSISTENT_GEMM.sizes
    for size in (sizes.gpu if gpulab.ON_GPU else [s for s in sizes.sim if sum(s[0]) > 1]):
        rows, K, N = size
        tasks = (sum(rows) // QT + len(rows)) * math.ceil(N / QT)
        assert checks.queue_blocks(size) < tasks, size


# the planted wrong answers of task 4 (tests/ch11_moe/test_ch11_planted.py) are its rejections


def test_aligned_rows_hint_emulates_that_kernel_exactly():
    """The emulation the hint compares with equals what the planted kernel writes, NaN gaps
    included, at a size where it differs from the right answer."""
    size = ((3, 0, 6, 5), 6, 5)
    g = torch.Generator().manual_seed(1)
    a, w, offsets, group, start = (t.to(gpulab.device) for t in checks._persistent_inputs(size, g))
    out = torch.full((a.shape[0], w.shape[2]), float("nan"), device=gpulab.device)
    queue = torch.zeros(1, dtype=torch.int32, device=gpulab.device)
    checks._make_persistent("aligned_rows")[checks.queue_blocks(size), (QT, QT)](a, w, offsets, group, start, queue, out)
    want = checks._rows_as_if_aligned(a, w, offsets, group, start)
    assert torch.equal(torch.isnan(out.cpu()), torch.isnan(want)) and torch.isnan(want).any()
    torch.testing.assert_close(out.cpu().nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-4)
