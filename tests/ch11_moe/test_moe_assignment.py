"""The chapter 11 checks accept right answers and reject planted wrong ones: dropped or
duplicated tokens, inclusive offsets, wrong segments, wrong weighting, wrong evictions."""
import math

import pytest
import torch
from numba import cuda

import gpulab
from gpulab.course.feedback import TaskFailed
from gpulab.moe import assignment as A
from gpulab.moe import kernels as K, torch_impl as R
from gpulab.moe.offload import ExpertCache, LRUCache

# ---------------------------------------------------------- task 1: permutation


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
    T, k = topk_idx.shape
    dev = topk_idx.device
    counts = torch.zeros(E, dtype=torch.int32, device=dev)
    offsets = torch.empty(E + 1, dtype=torch.int32, device=dev)
    cursor = torch.zeros(E, dtype=torch.int32, device=dev)
    rows = torch.empty(T * k, dtype=torch.int32, device=dev)
    slot_of = torch.empty(T, k, dtype=torch.int32, device=dev)
    n = T * k
    _hist[math.ceil(n / 32), 32](topk_idx, counts)
    _scan[1, 1](counts, offsets)
    _scatter[math.ceil(n / 32), 32](topk_idx, offsets, cursor, rows, slot_of)
    return counts, offsets, rows, slot_of


def _torch_perm(topk_idx, E):
    """The torch specification, unguarded: right answers, but no kernel of its own."""
    p = R.permute.__wrapped__(topk_idx, E)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def inclusive_offsets(topk_idx, E):
    c, o, s, sl = good_permute(topk_idx, E)
    return c, torch.cat([o[1:], o[-1:]]), s, sl


def drops_last(topk_idx, E):
    c, o, s, sl = good_permute(topk_idx, E)
    s = s.clone()
    s[-1] = s[0] if s.numel() > 1 else -1        # a race that lost one write
    return c, o, s, sl


def duplicates(topk_idx, E):
    c, o, s, sl = good_permute(topk_idx, E)
    s = s.clone()
    if s.numel() > 1:
        s[1] = s[0]
    return c, o, s, sl


def wrong_segment(topk_idx, E):                  # rows sorted by token, not by expert
    c, o, s, sl = good_permute(topk_idx, E)
    n = s.numel()
    rows = torch.arange(n, dtype=torch.int32, device=s.device)
    return c, o, rows, rows.view(sl.shape)


def stale_slot_of(topk_idx, E):
    c, o, s, sl = good_permute(topk_idx, E)
    return c, o, s, torch.zeros_like(sl)


def calls_reference(topk_idx, E):
    p = R.permute(topk_idx, E)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def calls_the_package(topk_idx, E):
    p = K.permute(topk_idx, E)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def torch_shortcuts(topk_idx, E):             # right answers from library routines
    flat = topk_idx.flatten().long()
    counts = torch.bincount(flat, minlength=E).to(torch.int32)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0).to(torch.int32)])
    order = torch.argsort(flat, stable=True).to(torch.int32)
    slot_of = torch.empty_like(order)
    slot_of[order.long()] = torch.arange(order.numel(), dtype=torch.int32, device=order.device)
    return counts, offsets, order, slot_of.view(topk_idx.shape)


def test_task1_accepts_the_atomic_kernel_solution():
    A.check_task1(good_permute)                  # its within-expert order is not the spec's: fine


@pytest.mark.parametrize("wrong,words", [
    (inclusive_offsets, "inclusive"), (drops_last, "dropped"), (duplicates, "duplicated"),
    (wrong_segment, "belong to expert"), (stale_slot_of, "slot_of"), (calls_reference, "reference"),
    (_torch_perm, "reference"), (calls_the_package, "reference"), (torch_shortcuts, "as kernels"),
])
def test_task1_rejects(wrong, words):
    with pytest.raises(TaskFailed, match=words):
        A.check_task1(wrong)


# ------------------------------------------------------------ task 2: the cache

class GoodScore(ExpertCache):
    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)
        self.alpha, self.top_p = alpha, min(top_p or experts, experts)
        self.S = [[0.0] * experts for _ in range(layers)]

    def observe(self, layer, mean_probs, needed):
        p = [float(v) for v in mean_probs]
        top = set(sorted(range(self.experts), key=lambda e: -p[e])[: self.top_p])
        for e in range(self.experts):
            self.S[layer][e] = (self.alpha * p[e] if e in top else 0.0) + (1 - self.alpha) * self.S[layer][e]

    def victim(self, layer, pinned):
        options = [e for e in sorted(self.cached[layer]) if e not in pinned]
        return min(options, key=lambda e: (self.S[layer][e], e)) if options else None


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


class LRU(LRUCache):
    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)


def test_task2_accepts_a_correct_policy():
    A.check_task2(GoodScore)


@pytest.mark.parametrize("wrong", [NoDecay, EvictHighest, RaiseAll, IgnoresPinned, LRU])
def test_task2_rejects(wrong):
    with pytest.raises(TaskFailed):
        A.check_task2(wrong)


# ------------------------------------------------------------ task 3: combine

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
def no_drop_check(y_sorted, slot_of, topk_weight, out):
    t, c = cuda.grid(2)
    if t < out.shape[0] and c < out.shape[1]:
        acc = 0.0
        for j in range(slot_of.shape[1]):
            acc += topk_weight[t, j] * y_sorted[slot_of[t, j], c]   # -1 reads the last row
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


SMALL = ((7, 2, 9), (19, 3, 6))


def test_task3_accepts_a_correct_kernel():
    A.check_task3(good_combine, sizes=SMALL)


@pytest.mark.parametrize("wrong", [unweighted, no_drop_check, swapped_weights, accumulates_into_out])
def test_task3_rejects(wrong):
    with pytest.raises(TaskFailed):
        A.check_task3(wrong, sizes=SMALL)


def test_task3_wants_a_kernel():
    with pytest.raises(TaskFailed, match="kernel"):
        A.check_task3(lambda *a: None)


def test_task3_refuses_the_package_kernel():
    with pytest.raises(TaskFailed, match="package's own"):
        A.check_task3(K.combine_kernel)

