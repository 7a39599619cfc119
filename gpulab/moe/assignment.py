"""Graded checks of the chapter 11 assignment (MoE permutation, an expert cache, the combine).

Each ``check_taskN`` prints ✅ or raises :class:`~gpulab.course.feedback.TaskFailed` with a
message that says what was wrong: a dropped or duplicated token, an assignment in the
wrong expert's rows, inclusive instead of exclusive offsets, a wrong weighting, a cache
that evicts the wrong expert.
"""
from __future__ import annotations

import math

import torch

from .. import runtime
from ..course.feedback import is_kernel, require, require_own_kernel, task
from ..harness import candidate_running, check, forbid_calls, mark_answers
from ..launch import launch_count
from . import kernels as K, torch_impl as ref
from .offload import ExpertCache, ScoreCache

__all__ = ["check_task1", "check_task2", "check_task3", "permutation_problems", "cache_replay",
           "HAND_TRACE"]


# ------------------------------------------------------------- task 1: permutation

def _random_topk(T, E, k, g):
    """Top-k expert ids with distinct experts per token (E >= k); some experts unused."""
    scores = torch.rand(T, E, generator=g)
    scores[:, E - 1] -= 2.0                     # the last expert is almost never chosen
    return torch.topk(scores, k, dim=1).indices.to(torch.int32)


def permutation_problems(topk_idx, num_experts, counts, offsets, sorted_assignment, slot_of) -> list[str]:
    """What is wrong with a permutation (an empty list: nothing).

    Any order *within* an expert's rows is accepted (an atomic scatter gives one); the
    counts and offsets must be exact, every assignment must appear exactly once, in its
    own expert's rows, and ``slot_of`` must point at it.
    """
    T, k = topk_idx.shape
    n = T * k
    flat = topk_idx.flatten().long().cpu()
    want_counts = torch.bincount(flat, minlength=num_experts)
    want_offsets = torch.zeros(num_experts + 1, dtype=torch.long)
    want_offsets[1:] = torch.cumsum(want_counts, 0)
    problems = []
    counts = torch.as_tensor(counts).long().cpu().flatten()
    offsets = torch.as_tensor(offsets).long().cpu().flatten()
    rows = torch.as_tensor(sorted_assignment).long().cpu().flatten()
    slots = torch.as_tensor(slot_of).long().cpu()
    if counts.shape != want_counts.shape or not torch.equal(counts, want_counts):
        problems.append(f"counts are {counts.tolist()}, expected {want_counts.tolist()} "
                        "(assignments routed to each expert)")
    if offsets.shape != want_offsets.shape:
        problems.append(f"offsets must have E + 1 = {num_experts + 1} entries, got {offsets.numel()}")
    elif not torch.equal(offsets, want_offsets):
        hint = ""
        if torch.equal(offsets[:num_experts], want_offsets[1:]):
            hint = " (that is an inclusive scan: offsets[e] must be where expert e STARTS)"
        problems.append(f"offsets are {offsets.tolist()}, expected {want_offsets.tolist()}{hint}")
    if rows.numel() < n:
        problems.append(f"sorted_assignment has {rows.numel()} entries, expected {n}")
        return problems
    rows = rows[:n]
    valid = (rows >= 0) & (rows < n)
    seen = torch.bincount(rows[valid], minlength=n)
    bad_values = (~valid).sum()
    if bad_values:
        problems.append(f"sorted_assignment holds {int(bad_values)} values outside 0..{n - 1} "
                        "(unwritten rows?)")
    dup = torch.nonzero(seen > 1).flatten()
    missing = torch.nonzero(seen == 0).flatten()
    if dup.numel():
        problems.append(f"assignment {int(dup[0])} (token {int(dup[0]) // k}, choice {int(dup[0]) % k}) "
                        f"appears {int(seen[dup[0]])} times: {dup.numel()} duplicated tokens")
    if missing.numel():
        problems.append(f"assignment {int(missing[0])} (token {int(missing[0]) // k}, choice "
                        f"{int(missing[0]) % k}) is missing: {missing.numel()} dropped tokens")
    if not problems:
        expert_of_row = torch.repeat_interleave(torch.arange(num_experts), want_counts)
        wrong = torch.nonzero(flat[rows] != expert_of_row).flatten()
        if wrong.numel():
            r = int(wrong[0])
            problems.append(f"row {r} holds assignment {int(rows[r])} of expert {int(flat[rows[r]])}, "
                            f"but rows {int(want_offsets[expert_of_row[r]])}..{int(want_offsets[expert_of_row[r] + 1]) - 1} "
                            f"belong to expert {int(expert_of_row[r])}")
    if not problems:
        if tuple(slots.shape) != (T, k):
            problems.append(f"slot_of must have shape {(T, k)}, got {tuple(slots.shape)}")
        else:
            back = rows[slots.flatten().clamp(0, n - 1)]
            wrong = torch.nonzero((back != torch.arange(n)) | (slots.flatten() < 0)).flatten()
            if wrong.numel():
                a = int(wrong[0])
                problems.append(f"slot_of[{a // k}, {a % k}] = {int(slots.flatten()[a])} but that row holds "
                                f"assignment {int(back[a])}, not {a}")
    return problems


#: (tokens, experts, top-k) of task 1's cases; on a GPU also one large enough that the
#: histogram and the scatter span many blocks (races between blocks show there)
TASK1_CASES = ((1, 3, 1), (5, 4, 2), (13, 5, 2), (9, 6, 3)) + runtime.pick((), ((4099, 64, 2),))

# the package's own permutation answers task 1: calling it is calling the reference
mark_answers(K.permute, K.histogram_kernel, K.offsets_kernel, K.scatter_kernel)

#: library routines that would do the task's work for it: histogram, sort, scan
_PERMUTE_SHORTCUTS = [(torch, "bincount"), (torch, "argsort"), (torch, "sort"), (torch, "cumsum"),
                      (torch, "histc"), (torch.Tensor, "argsort"), (torch.Tensor, "sort"),
                      (torch.Tensor, "cumsum"), (torch.Tensor, "bincount")]


def check_task1(permute_fn, cases=TASK1_CASES, seed: int = 11):
    """Task 1: ``permute_fn(topk_idx, num_experts) -> (counts, offsets, sorted_assignment, slot_of)``."""
    with task("Task 1: token permutation (histogram, exclusive scan, scatter)"):
        require(callable(permute_fn), "pass your function my_permute itself")
        g = torch.Generator().manual_seed(seed)
        for T, E, k in cases:
            topk = _random_topk(T, E, k, g).to(runtime.device)
            launches = launch_count()
            with candidate_running("my_permute"), forbid_calls(
                    _PERMUTE_SHORTCUTS, "write the histogram, the scan and the scatter as kernels"):
                out = permute_fn(topk.clone(), E)
            runtime.synchronize()
            require(launch_count() > launches, "my_permute launched no kernel: write the histogram, "
                    "scan and scatter as @gpulab.kernel kernels")
            require(isinstance(out, (tuple, list)) and len(out) == 4,
                    "return the tuple (counts, offsets, sorted_assignment, slot_of)")
            problems = permutation_problems(topk, E, *out)
            require(not problems, f"{T} tokens, {E} experts, top-{k}: " + "; ".join(problems))


# ------------------------------------------------------------ task 2: expert cache

#: a hand-worked trace: (mean router probabilities of 4 experts, routed experts), one layer
#: (worked in the notebook: with alpha 0.5, top_p 2 and 2 slots the evictions are
#: [], [0], [1], [2], [1]; LRU would evict 3 at the last step)
HAND_TRACE = [
    ([0.50, 0.30, 0.10, 0.10], [0, 1]),
    ([0.10, 0.20, 0.60, 0.10], [2, 1]),
    ([0.10, 0.10, 0.20, 0.60], [3, 2]),
    ([0.15, 0.60, 0.05, 0.20], [1, 3]),
    ([0.05, 0.10, 0.60, 0.25], [2]),
]


def cache_replay(cache: ExpertCache, trace, layer: int = 0):
    """Replay ``[(mean_probs, routed), ...]`` on one layer: [(hits, evicted), ...] per step."""
    log = []
    for probs, routed in trace:
        probs = torch.tensor(probs, dtype=torch.float64)
        cache.observe(layer, probs, set(routed))
        hits = sorted(e for e in routed if cache.lookup(layer, e))
        evicted = []
        for e in routed:
            if e not in hits:
                out = cache.admit(layer, e, pinned=set(routed))
                if out is not None:
                    evicted.append(out)
        log.append((hits, evicted))
    return log


def _random_trace(steps, experts, k, g):
    trace = []
    for _ in range(steps):
        p = torch.softmax(3 * torch.randn(experts, generator=g), 0)
        routed = torch.topk(p + 0.05 * torch.rand(experts, generator=g), k).indices.tolist()
        trace.append((p.tolist(), routed))
    return trace


def check_task2(cache_cls, alpha: float = 0.5, seed: int = 5):
    """Task 2: ``cache_cls(layers, experts, capacity, alpha=..., top_p=...)``, HybriMoE's score cache."""
    with task("Task 2: HybriMoE's score-based expert cache"):
        require(isinstance(cache_cls, type) and issubclass(cache_cls, ExpertCache),
                "pass your class (a subclass of gpulab.moe.offload.ExpertCache)")
        require(not issubclass(cache_cls, ScoreCache), "write the policy yourself: do not subclass ScoreCache")
        # 1. the hand-worked trace of the notebook, capacity 2, top_p 2
        mine = cache_replay(cache_cls(1, 4, 2, alpha=alpha, top_p=2), HAND_TRACE)
        want = cache_replay(ScoreCache(1, 4, 2, alpha=alpha, top_p=2), HAND_TRACE)
        for step, (m, w) in enumerate(zip(mine, want)):
            require(m[0] == w[0], f"hand trace step {step}: hits {m[0]}, expected {w[0]}")
            require(m[1] == w[1], f"hand trace step {step}: evicted {m[1]}, expected {w[1]} "
                    "(evict the cached, not-routed expert with the LOWEST score)")
        # 2. longer random traces, several layers' worth of settings
        g = torch.Generator().manual_seed(seed)
        for experts, capacity, top_p, k in ((6, 3, 3, 2), (8, 4, 8, 2), (8, 3, 2, 1)):
            trace = _random_trace(40, experts, k, g)
            mine = cache_replay(cache_cls(1, experts, capacity, alpha=alpha, top_p=top_p), trace)
            want = cache_replay(ScoreCache(1, experts, capacity, alpha=alpha, top_p=top_p), trace)
            for step, (m, w) in enumerate(zip(mine, want)):
                require(m == w, f"{experts} experts, capacity {capacity}, top_p {top_p}, step {step}: "
                        f"(hits, evicted) = {m}, expected {w}")


# --------------------------------------------------------------- task 3: combine

def _combine_inputs(size, g):
    T, k, H = size
    rows = T * k + 3
    y_sorted = torch.randn(rows, H, generator=g)
    slot_of = torch.randperm(T * k, generator=g)[: T * k].view(T, k).to(torch.int32)
    drop = torch.rand(T, k, generator=g) < 0.2          # capacity-dropped assignments
    slot_of[drop] = -1
    w = torch.rand(T, k, generator=g) + 0.1
    w = w / w.sum(1, keepdim=True)
    return y_sorted, slot_of, w


def check_task3(combine_kernel, sizes=((1, 1, 5), (7, 2, 9), (19, 3, 6), (33, 2, 17))):
    """Task 3: the numba kernel ``combine_kernel(y_sorted, slot_of, topk_weight, out)``."""
    with task("Task 3: the combine kernel (inverse permutation + weighted sum)"):
        require(is_kernel(combine_kernel), "pass the kernel itself (decorated with @gpulab.kernel)")
        require_own_kernel(combine_kernel, K)
        tile = 8

        def candidate(y_sorted, slot_of, w, out):
            T, H = out.shape
            combine_kernel[(math.ceil(T / tile), math.ceil(H / tile)), (tile, tile)](y_sorted, slot_of, w, out)

        check(candidate, ref.combine, _combine_inputs, sizes=sizes, trials=1, name="combine_kernel")
