"""Graded checks of assignment 11 (solutions/11_moe.ipynb), on the checks engine.

The tasks go from easy to hard:

Task 1: ``combine_kernel(y_sorted, slot_of, topk_weight, out)``: the inverse permutation
        with the routing weights, one thread per output element, 8x8 blocks.
Task 2: ``MyScoreCache``, HybriMoE's score-based expert cache, replayed on traces: the
        lecture's hand trace, traces worked so that ties, pinned experts and alpha decide
        the evictions, and random ones.
Task 3: ``my_permute(topk_idx, num_experts) -> (counts, offsets, sorted_assignment, slot_of)``:
        the histogram, the exclusive scan and the scatter that sort MoE assignments by
        expert, computed by the learner's kernels (the host only allocates and launches).
        Any order *within* an expert's rows is right (an atomic scatter gives one), so the
        check judges the permutation itself (:func:`permutation_problems`), not elementwise.
Task 4: ``persistent_gemm_kernel(a, w, offsets, tile_group, tile_row_start, queue, out)``:
        FlashMoE's core on one GPU, a persistent grouped GEMM. A grid far smaller than the
        work stays resident; each block's leader takes the next (row tile, column tile)
        task from an atomic counter, and the block computes that tile of its expert's
        product ``out[rows of e] = a[rows of e] @ w[e]``, the tile table saying which
        expert and rows a row tile holds.

Each task declares its planted wrong answers at the end of this module; the engine
(:mod:`.engine`) gives the NaN frames, the race recorder and the host-code rules.
"""
from __future__ import annotations

import ctypes
import dis
import inspect
import math
import types
from dataclasses import dataclass

import torch
from numba import cuda, float32, int32

from ... import runtime
from ...harness import mark_answers, reference
from ...launch import kernel
from ...moe import kernels as moe_kernels, torch_impl as spec
from ...moe.offload import HAND_TRACE, ExpertCache, LRUCache, ScoreCache, cache_replay
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "permutation_problems",
           "permutation_reference", "score_cache_reference", "COMBINE_TILE",
           "PERMUTATION", "SCORE_CACHE", "COMBINE", "PERSISTENT_GEMM", "QUEUE_TILE", "queue_blocks",
           "persistent_gemm_reference", "tile_table"]


# ------------------------------------------------------------------ task 3: permutation

def _permutation_inputs(size, gen):
    """Top-k expert ids, distinct per token. One middle expert is never chosen (its count
    is 0, its segment empty) and the last expert is chosen at least once (a scan that
    stops one expert early shows)."""
    tokens, experts, k = size
    scores = torch.rand(tokens, experts, generator=gen)
    unused = experts // 2
    if experts > k and unused != experts - 1:
        scores[:, unused] -= 2.0
    scores[0, experts - 1] += 2.0
    return torch.topk(scores, k, dim=1).indices.to(torch.int32), experts


@reference
def permutation_reference(topk_idx: torch.Tensor, num_experts: int):
    """The specification's permutation (token order within an expert)."""
    p = spec.permute(topk_idx, num_experts)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def _counts_problems(counts, want_counts, n) -> list[str]:
    if counts.shape == want_counts.shape and torch.equal(counts, want_counts):
        return []
    problem = (f"counts are {counts.tolist()}, expected {want_counts.tolist()} "
               "(assignments routed to each expert)")
    if counts.shape == want_counts.shape and int(counts.sum()) < n:
        problem += (f": they add up to {int(counts.sum())} of {n} assignments, so some were never "
                    "counted (launch enough threads for all T * k assignments: ceil(T * k / block) blocks)")
    return [problem]


def _offsets_problems(offsets, want_offsets, num_experts) -> list[str]:
    if offsets.shape != want_offsets.shape:
        return [f"offsets must have E + 1 = {num_experts + 1} entries, got {offsets.numel()}"]
    if torch.equal(offsets, want_offsets):
        return []
    hint = ""
    if torch.equal(offsets[:num_experts], want_offsets[1:]):
        hint = " (that is an inclusive scan: offsets[e] must be where expert e STARTS)"
    elif torch.equal(offsets[:num_experts], want_offsets[:num_experts]):
        hint = " (offsets[E], the total, is wrong: the scan must add every expert's count)"
    return [f"offsets are {offsets.tolist()}, expected {want_offsets.tolist()}{hint}"]


def _rows_problems(rows, n, k) -> list[str]:
    """Every assignment 0..n-1 exactly once."""
    valid = (rows >= 0) & (rows < n)
    seen = torch.bincount(rows[valid], minlength=n)
    problems = []
    if (~valid).any():
        problems.append(f"sorted_assignment holds {int((~valid).sum())} values outside 0..{n - 1} "
                        "(unwritten rows?)")
    dup = torch.nonzero(seen > 1).flatten()
    missing = torch.nonzero(seen == 0).flatten()
    if dup.numel():
        a = int(dup[0])
        problems.append(f"assignment {a} (token {a // k}, choice {a % k}) appears {int(seen[a])} times: "
                        f"{dup.numel()} duplicated tokens")
    if missing.numel():
        a = int(missing[0])
        problems.append(f"assignment {a} (token {a // k}, choice {a % k}) is missing: "
                        f"{missing.numel()} dropped tokens")
    return problems


def _segment_problems(rows, flat, want_counts, want_offsets, num_experts) -> list[str]:
    """Each row lies in its own expert's segment."""
    expert_of_row = torch.repeat_interleave(torch.arange(num_experts), want_counts)
    wrong = torch.nonzero(flat[rows] != expert_of_row).flatten()
    if not wrong.numel():
        return []
    r = int(wrong[0])
    e = int(expert_of_row[r])
    return [f"row {r} holds assignment {int(rows[r])} of expert {int(flat[rows[r]])}, but rows "
            f"{int(want_offsets[e])}..{int(want_offsets[e + 1]) - 1} belong to expert {e}"]


def _slot_problems(rows, slots, T, k) -> list[str]:
    """slot_of[t, j] is the row that holds assignment t * k + j."""
    n = T * k
    if tuple(slots.shape) != (T, k):
        return [f"slot_of must have shape {(T, k)}, got {tuple(slots.shape)}"]
    flat_slots = slots.flatten()
    back = rows[flat_slots.clamp(0, n - 1)]
    wrong = torch.nonzero((back != torch.arange(n)) | (flat_slots < 0) | (flat_slots >= n)).flatten()
    if not wrong.numel():
        return []
    a = int(wrong[0])
    return [f"slot_of[{a // k}, {a % k}] = {int(flat_slots[a])} but that row holds assignment "
            f"{int(back[a])}, not {a}"]


def permutation_problems(topk_idx, num_experts, counts, offsets, sorted_assignment, slot_of) -> list[str]:
    """What is wrong with a permutation (an empty list: nothing).

    Any order *within* an expert's rows is accepted; the counts and offsets must be exact,
    every assignment must appear exactly once, in its own expert's rows, and ``slot_of``
    must point at it.
    """
    T, k = topk_idx.shape
    n = T * k
    flat = topk_idx.flatten().long().cpu()
    want_counts = torch.bincount(flat, minlength=num_experts)
    want_offsets = torch.zeros(num_experts + 1, dtype=torch.long)
    want_offsets[1:] = torch.cumsum(want_counts, 0)
    counts, offsets, rows = (torch.as_tensor(t).long().cpu().flatten() for t in (counts, offsets, sorted_assignment))
    slots = torch.as_tensor(slot_of).long().cpu()
    problems = _counts_problems(counts, want_counts, n) + _offsets_problems(offsets, want_offsets, num_experts)
    if rows.numel() < n:
        return problems + [f"sorted_assignment has {rows.numel()} entries, expected {n}"]
    rows = rows[:n]
    problems += _rows_problems(rows, n, k)
    if not problems:
        problems += _segment_problems(rows, flat, want_counts, want_offsets, num_experts)
    if not problems:
        problems += _slot_problems(rows, slots, T, k)
    return problems


def _verify_permutation(case) -> str | None:
    topk_idx, num_experts = case.inputs
    if not all(isinstance(out, torch.Tensor) for out in case.outputs):
        return "return the tensors (counts, offsets, sorted_assignment, slot_of)"
    return "; ".join(permutation_problems(topk_idx, num_experts, *case.outputs)) or None


# the package's own permutation answers task 1: calling it is calling the reference
mark_answers(moe_kernels.permute, moe_kernels.histogram_kernel, moe_kernels.offsets_kernel,
             moe_kernels.scatter_kernel)

#: library routines that would do the task's work for it: histogram, sort, scan
_PERMUTE_SHORTCUTS = [(torch, "bincount"), (torch, "argsort"), (torch, "sort"), (torch, "cumsum"),
                      (torch, "histc"), (torch, "unique"), (torch.Tensor, "argsort"), (torch.Tensor, "sort"),
                      (torch.Tensor, "cumsum"), (torch.Tensor, "bincount")]

PERMUTATION = Task(
    chapter="11", number=3, title="token permutation (histogram, exclusive scan, scatter)", kind=FUNCTION,
    reference=permutation_reference, make_inputs=_permutation_inputs,
    # (tokens, experts, top-k): 40 x 2 = 80 assignments outgrow one hard-coded block of 32 or 64
    # threads, 70 x 2 = 140 a grid hard-coded to 4 blocks of 32 (one of 256 shows at the GPU sizes)
    sizes=Sizes(sim=[(1, 3, 1), (5, 4, 2), (13, 5, 2), (9, 6, 3), (40, 5, 2), (70, 5, 2)],
                hidden=[(3, 2, 2), (17, 7, 3)], gpu=[(4099, 64, 2), (100_003, 8, 2)]),
    forbidden=_PERMUTE_SHORTCUTS, forbidden_why="write the histogram, the scan and the scatter as kernels",
    kernel_only=True, own_kernels=(moe_kernels,), verify=_verify_permutation,
    candidate_name="my_permute", solution="my_permute",
    hints=[Hint(lambda case: isinstance(case.error, IndexError),
                "A row past the end: is the scan inclusive? offsets[e] must be where expert e STARTS "
                "(offsets[0] = 0), and a row is offsets[e] plus the rank an atomic on cursor[e] returns")],
)
check_task3 = PERMUTATION.checker()


# ------------------------------------------------------------------ task 2: the expert cache

@dataclass(frozen=True)
class _Trace:
    """One replay of task 2: a trace (worked by hand, or random) and the cache's settings."""
    experts: int
    capacity: int
    top_p: int
    alpha: float
    steps: tuple = ()      # a trace worked by hand, [(mean_probs, routed), ...]
    about: str = ""        # what the hand-worked trace decides
    random_steps: int = 0  # else: this many random steps, `routed_k` experts routed each
    routed_k: int = 2

    def __str__(self) -> str:
        what = self.about or f"a random trace of {self.random_steps} steps"
        return f"{self.experts} experts, capacity {self.capacity}, top_p {self.top_p}, alpha {self.alpha} ({what})"


#: top_p 1: routed experts outside the top stay at score 0, so two cached experts tie (the
#: lowest id goes), and a pinned expert with the lowest score must be kept
_TIE_TRACE = (
    ([0.7, 0.1, 0.1, 0.1], [1, 2]),   # 1 and 2 cached, both at score 0
    ([0.1, 0.1, 0.1, 0.7], [3]),      # a tie between 1 and 2: evict 1, the lowest id
    ([0.1, 0.1, 0.1, 0.7], [2, 0]),   # 2 (score 0) is routed, so pinned: evict 3
    ([0.1, 0.7, 0.1, 0.1], [1]),
)
#: evicts 0 when alpha > 1/3 and 1 below: an alpha hard-coded to 0.5 shows at alpha 0.25
_ALPHA_TRACE = (
    ([0.90, 0.05, 0.05], [0]),
    ([0.05, 0.60, 0.35], [1]),
    ([0.10, 0.10, 0.80], [2]),        # S0 = 0.9a(1-a)^2 against S1 = 0.6a(1-a)
    ([0.80, 0.10, 0.10], [0, 1]),
)
#: top_p 1: at the third step expert 2 (p 0.45, not the top) must not be raised, or it
#: outscores expert 1 and 1 is evicted instead of 2
_TOP_P_TRACE = (
    ([0.10, 0.20, 0.70], [2]),
    ([0.20, 0.70, 0.10], [1]),
    ([0.50, 0.05, 0.45], [0]),
    ([0.10, 0.80, 0.10], [1]),
)
#: top_p 1: expert 0 is the top four times; its old score must decay each time (it ends
#: below expert 1's), or it climbs past 1 and 1 is evicted instead of 0
_DECAY_TRACE = tuple([([0.50, 0.25, 0.25], [0])] * 4) + (
    ([0.05, 0.90, 0.05], [1]),
    ([0.05, 0.05, 0.90], [2]),
)

#: top_p 1: expert 2 is raised at step 0 while not cached and must decay at step 1 like any
#: other (0.35 -> 0.175); at step 2 it then scores 0.0875, below expert 0's 0.1, and is evicted.
#: A score kept while uncached (0.35, then 0.175 once cached) evicts 0 instead
_UNCACHED_DECAY_TRACE = (
    ([0.05, 0.20, 0.70, 0.05], [3, 0]),
    ([0.40, 0.30, 0.10, 0.20], [2]),      # evict 3 (score 0); 2 comes in with its decayed score
    ([0.20, 0.10, 0.30, 0.40], [1]),      # S0 = 0.1 against S2 = 0.0875: evict 2
)
#: top_p 1: expert 0 is evicted at step 1 with score 0.2 and keeps it, decaying (0.1, 0.05);
#: back in the cache at step 3 it outscores expert 3 (0.025), so 3 is evicted. A score reset
#: to 0 on eviction evicts 0 instead
_EVICTED_SCORE_TRACE = (
    ([0.30, 0.10, 0.20, 0.40], [0, 3]),
    ([0.40, 0.20, 0.30, 0.10], [3, 2]),   # evict 0 (score 0.2)
    ([0.20, 0.10, 0.40, 0.30], [3, 0]),   # evict 2 (score 0.2)
    ([0.05, 0.05, 0.70, 0.20], [2]),      # S0 = 0.05 against S3 = 0.025: evict 3
)

_TRACES = [
    _Trace(4, 2, 2, 0.5, tuple(HAND_TRACE), "the lecture's hand trace"),
    _Trace(4, 2, 1, 0.5, _TIE_TRACE, "a trace of ties and pinned experts"),
    _Trace(3, 2, 1, 0.25, _ALPHA_TRACE, "a trace where alpha decides"),
    _Trace(3, 2, 1, 0.5, _TOP_P_TRACE, "a trace where top_p decides"),
    _Trace(3, 2, 1, 0.5, _DECAY_TRACE, "a trace where the top expert's decay decides"),
    _Trace(4, 2, 1, 0.5, _UNCACHED_DECAY_TRACE, "a trace where an uncached expert's decay decides"),
    _Trace(4, 2, 1, 0.5, _EVICTED_SCORE_TRACE, "a trace where an evicted expert's score decides"),
    _Trace(6, 3, 3, 0.5, random_steps=40, routed_k=2),
    _Trace(8, 4, 8, 0.7, random_steps=40, routed_k=2),
    _Trace(8, 3, 2, 0.25, random_steps=40, routed_k=1),
]
_HIDDEN_TRACES = [_Trace(4, 2, 2, 0.3, tuple(HAND_TRACE), "the lecture's hand trace"),
                  _Trace(10, 4, 3, 0.3, random_steps=60, routed_k=3)]


def _random_trace(steps, experts, k, gen):
    trace = []
    for _ in range(steps):
        p = torch.softmax(3 * torch.randn(experts, generator=gen), 0)
        routed = torch.topk(p + 0.05 * torch.rand(experts, generator=gen), k).indices.tolist()
        trace.append((p.tolist(), routed))
    return trace


def _cache_inputs(trace: _Trace, gen):
    """The replay's inputs: the steps (worked by hand, or drawn now) and the cache's settings."""
    steps = list(trace.steps) or _random_trace(trace.random_steps, trace.experts, trace.routed_k, gen)
    return steps, trace.experts, trace.capacity, trace.alpha, trace.top_p


def _replay(cache_cls, trace, experts, capacity, alpha, top_p):
    """[(hits, evicted), ...] of a fresh one-layer ``cache_cls`` on ``trace``."""
    return cache_replay(cache_cls(1, experts, capacity, alpha=alpha, top_p=top_p), trace)


def score_cache_reference(trace, experts, capacity, alpha, top_p):
    """HybriMoE's cache (:class:`gpulab.moe.offload.ScoreCache`) replayed on the trace."""
    return (_replay(ScoreCache, trace, experts, capacity, alpha, top_p),)


class _ReplayLog(list):
    """A replay's [(hits, evicted), ...], remembering the policy replayed (for the hints)."""
    policy: type


def _replayer(cache_cls):
    """What the engine calls: a replay of the learner's class on one trace."""
    def replay(trace, experts, capacity, alpha, top_p):
        log = _ReplayLog(_replay(cache_cls, trace, experts, capacity, alpha, top_p))
        log.policy = cache_cls
        return (log,)

    return replay


def _verify_replay(case) -> str | None:
    (mine,), (want,) = case.outputs, case.expected
    for step, (m, w) in enumerate(zip(mine, want)):
        if m[0] != w[0]:
            return f"step {step}: hits {m[0]}, expected {w[0]}"
        if m[1] != w[1]:
            return (f"step {step}: evicted {m[1]}, expected {w[1]} (evict the cached expert that is not "
                    "pinned with the LOWEST score, the lowest id on a tie)")
    if len(mine) != len(want):
        return f"the replay logged {len(mine)} steps, expected {len(want)}"
    return None


def _is_cache_class(cache_cls) -> str | None:
    if not (isinstance(cache_cls, type) and issubclass(cache_cls, ExpertCache)):
        return f"pass your class (a subclass of {ExpertCache.__module__}.{ExpertCache.__name__})"
    return None


#: one operation compiled two ways: Python 3.11 loads a method of a module imported in the
#: same file with LOAD_ATTR, and of any other name with LOAD_METHOD
_SAME_OPERATION = {"LOAD_METHOD": "LOAD_ATTR"}
_JUMPS = set(dis.hasjrel) | set(dis.hasjabs)


def _code_of(code: types.CodeType) -> tuple:
    """What compiled code does, as (operation, operand) pairs: the names, constants and
    nested code it uses, without its name, file, line numbers, docstring or jump offsets.
    One source compiled again (under another class name, from another file) gives the same."""
    operations = []
    for ins in dis.get_instructions(code):
        operand = None if ins.opcode in _JUMPS else ins.argval
        if isinstance(operand, types.CodeType):
            operand = _code_of(operand)
        operations.append((_SAME_OPERATION.get(ins.opname, ins.opname), operand))
    return tuple(operations)


#: the methods that make ScoreCache the policy (its graded behaviour)
_POLICY_METHODS = ("observe", "victim")


def _copies_the_package_policy(cache_cls) -> bool:
    """Each of observe and victim is ScoreCache's own code, copied or recompiled (its source
    pasted under another name, or exec'd from inspect.getsource)."""
    for name in _POLICY_METHODS:
        mine = inspect.getattr_static(cache_cls, name, None)
        if not isinstance(mine, types.FunctionType) or \
                _code_of(mine.__code__) != _code_of(getattr(ScoreCache, name).__code__):
            return False
    return True


def _not_the_package_policy(cache_cls) -> str | None:
    if not isinstance(cache_cls, type):
        return None
    if issubclass(cache_cls, ScoreCache):
        return "write the policy yourself: do not subclass ScoreCache"
    if _copies_the_package_policy(cache_cls):
        return ("that is the course's own ScoreCache (its observe and victim are the code of "
                f"{ScoreCache.__module__}.ScoreCache): write the policy yourself")
    return None


def _behaves_like(wrong_cls, say: str) -> Hint:
    """A hint for a known mistake: on the failed trace the replay equals that of
    ``wrong_cls`` (which differs from the right one there), and so it does on each
    hand-worked trace (several mistakes can give one trace's log; these tell them apart)."""
    def when(case):
        wrong = _replay(wrong_cls, *case.inputs)
        if case.outputs[0] != wrong or wrong == case.expected[0]:
            return False
        policy = case.outputs[0].policy
        return all(_replay(policy, *_cache_inputs(trace, None)) == _replay(wrong_cls, *_cache_inputs(trace, None))
                   for trace in _TRACES if trace.steps)

    return Hint(when, say)


# a candidate that hands the work to the package's cache is calling the reference
mark_answers(ScoreCache.observe, ScoreCache.victim)


def _make_policy(mistake=None):
    """A score cache with one of the known mistakes (task 2's hints and planted answers)."""
    no_decay, undecayed_top, raise_all, fixed_alpha, evict_highest, tie_highest, ignores_pinned, \
        decay_cached_only, reset_on_evict = (
            mistake == m for m in ("no_decay", "undecayed_top", "raise_all", "fixed_alpha", "evict_highest",
                                   "tie_highest", "ignores_pinned", "decay_cached_only", "reset_on_evict"))

    class Policy(ExpertCache):
        def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
            super().__init__(layers, experts, capacity)
            self.alpha = 0.5 if fixed_alpha else alpha
            self.top_p = experts if raise_all else min(top_p or experts, experts)
            self.scores = [[0.0] * experts for _ in range(layers)]

        def observe(self, layer, mean_probs, needed):
            p = [float(v) for v in mean_probs]
            top = set(sorted(range(self.experts), key=lambda e: -p[e])[: self.top_p])
            row = self.scores[layer]
            for e in range(self.experts):
                if e in top:
                    row[e] = self.alpha * p[e] + (1.0 if undecayed_top else 1 - self.alpha) * row[e]
                elif not no_decay and not (decay_cached_only and e not in self.cached[layer]):
                    row[e] = (1 - self.alpha) * row[e]

        def victim(self, layer, pinned):
            row = self.scores[layer]
            options = [e for e in sorted(self.cached[layer]) if ignores_pinned or e not in pinned]
            if not options:
                return None
            if evict_highest:
                return max(options, key=lambda e: (row[e], -e))
            return min(options, key=lambda e: (row[e], -e if tie_highest else e))

        def _forget(self, layer, expert):
            if reset_on_evict:
                self.scores[layer][expert] = 0.0

    Policy.__name__ = Policy.__qualname__ = f"ScoreCache_{mistake}"
    return Policy


class _LRUWithScoreArguments(LRUCache):
    """LRU behind the score cache's constructor: what a policy that ignores scores does."""

    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)


_POLICY_MISTAKES = {
    "no_decay": "Experts outside the top_p must decay too: S = (1 - alpha) * S",
    "undecayed_top": "The raised experts' old score decays as well: S = alpha * p + (1 - alpha) * S",
    "raise_all": "Only the top_p experts with the largest mean_probs are raised (top_p is ignored)",
    "fixed_alpha": "The evictions match alpha = 0.5: use the alpha argument",
    "evict_highest": "Evict the LOWEST score, not the highest",
    "tie_highest": "On a tie evict the lowest expert id",
    "ignores_pinned": "A pinned expert (routed this step) was evicted: never evict one in pinned",
    "decay_cached_only": "Experts that are not cached decay too: every expert outside the top_p gets "
                         "S = (1 - alpha) * S, cached or not",
    "reset_on_evict": "An evicted expert keeps its score: it goes on decaying while out of the cache "
                      "(do not reset it to 0)",
}
_WRONG_POLICIES = {mistake: _make_policy(mistake) for mistake in _POLICY_MISTAKES}

SCORE_CACHE = Task(
    chapter="11", number=2, title="HybriMoE's score-based expert cache", kind=FUNCTION,
    reference=score_cache_reference, make_inputs=_cache_inputs,
    sizes=Sizes(sim=_TRACES, hidden=_HIDDEN_TRACES), adapt=_replayer, verify=_verify_replay,
    requires=[_is_cache_class, _not_the_package_policy], candidate_name="your cache",
    hints=[_behaves_like(_WRONG_POLICIES[m], say) for m, say in _POLICY_MISTAKES.items()]
    + [_behaves_like(_LRUWithScoreArguments, "That is LRU: evict by score, not by last use")],
    solution="MyScoreCache",
)
check_task2 = SCORE_CACHE.checker()


# ------------------------------------------------------------------ task 1: the combine

#: threads per block side of the combine's launch: (ceil(T / 8), ceil(H / 8)) blocks of 8x8
COMBINE_TILE = 8


def _combine_inputs(size, gen):
    """y_sorted with 3 spare rows (a row index -1 wrapping to the last one shows), slot_of
    a random permutation with about a fifth of the assignments dropped (-1, at least one),
    weights that differ within a token (a swapped pair shows) and sum to 1."""
    T, k, H = size
    y_sorted = torch.randn(T * k + 3, H, generator=gen)
    slot_of = torch.randperm(T * k, generator=gen).view(T, k).to(torch.int32)
    drop = torch.rand(T, k, generator=gen) < 0.2
    if T * k > 1:
        drop[-1, -1] = True
    slot_of[drop] = -1
    w = torch.rand(T, k, generator=gen) + 0.1
    return y_sorted, slot_of, w / w.sum(1, keepdim=True)


def _launch_combine(kernel_, inputs, outputs, size):
    T, _, H = size
    grid = (math.ceil(T / COMBINE_TILE), math.ceil(H / COMBINE_TILE))
    kernel_[grid, (COMBINE_TILE, COMBINE_TILE)](*inputs, outputs[0])


def _combine_with(y_sorted, slot_of, w):
    """torch's combine of explicit rows and weights, nothing dropped."""
    return (y_sorted[slot_of.long()] * w.unsqueeze(-1)).sum(1)


def _combine_renormalized(y_sorted, slot_of, w):
    """The combine with each token's kept weights rescaled to sum to 1."""
    kept = torch.where(slot_of >= 0, w, torch.zeros_like(w))
    total = kept.sum(1, keepdim=True)
    return spec.combine(y_sorted, slot_of, torch.where(total > 0, kept / total, kept))


def _combine_row_0_dropped(y_sorted, slot_of, w):
    """The combine with row 0 taken for a dropped slot (a test of s > 0, not s >= 0)."""
    return spec.combine(y_sorted, torch.where(slot_of == 0, -1, slot_of), w)


def _only_first_block_written(case) -> bool:
    written = ~torch.isnan(case.output.cpu())
    tile = COMBINE_TILE
    if written.shape[0] <= tile and written.shape[1] <= tile:
        return False
    return bool(written[:tile, :tile].all()) and not bool(written[tile:].any() or written[:, tile:].any())


def _unwritten_columns_or_rows(case) -> bool:
    some_written = not bool(torch.isnan(case.output).all())
    return some_written and case.unwritten_only and not _only_first_block_written(case)


COMBINE = Task(
    chapter="11", number=1, title="the combine kernel (inverse permutation + weighted sum)", kind=KERNEL,
    reference=spec.combine, make_inputs=_combine_inputs,
    # (tokens, top-k, hidden): 20 x 12 spans 3 x 2 blocks of 8x8, and with t and c swapped
    # its threads cover 16 x 12 (told apart from block 0's 8 x 8 alone); 19 tokens, top-3
    sizes=Sizes(sim=[(1, 1, 5), (20, 2, 12), (7, 2, 9), (19, 3, 6)], hidden=[(3, 4, 2), (41, 2, 3), (33, 2, 17)],
                gpu=[(4099, 2, 257), (1000, 8, 64)]),
    launch=_launch_combine, rtol=1e-4, atol=1e-5, own_kernels=(moe_kernels,),
    candidate_name="combine_kernel", solution="combine_kernel",
    hints=[
        Hint(lambda case: case.error is not None or case.frame_touched,
             "Guard the write with `if t < out.shape[0] and c < out.shape[1]`"),
        Hint(lambda case: bool(case.findings),
             "Each thread computes and writes its own element out[t, c], with t, c = cuda.grid(2)"),
        Hint(_only_first_block_written,
             "Only the first block's elements were written: take t, c = cuda.grid(2) (block index "
             "times block size plus thread index), not cuda.threadIdx alone"),
        Hint(_unwritten_columns_or_rows,
             "Unwritten elements: are t and c swapped? t, c = cuda.grid(2): x runs over tokens, y over columns"),
        Hint(lambda case: torch.isnan(case.output).all() and not case.findings and case.error is None,
             "Every element is NaN: out starts as NaN here, so sum in a local float32 and write "
             "out[t, c] once (do not += into out)"),
        Hint.matches(lambda y, slots, w: spec.combine(y, slots, torch.ones_like(w)),
                     "The output is the unweighted sum: multiply each row by topk_weight[t, j]"),
        Hint.matches(lambda y, slots, w: _combine_with(y, slots, w),
                     "slot -1 marks a dropped assignment: skip it (a -1 index reads the last row)"),
        Hint.matches(lambda y, slots, w: spec.combine(y, slots, w.flip(1)),
                     "The weights are swapped: topk_weight[t, j] goes with slot_of[t, j]"),
        Hint.matches(_combine_renormalized, "Do not renormalize the weights: a dropped assignment's weight is "
                                            "simply lost, out = sum of topk_weight * row over the kept ones"),
        Hint.matches(_combine_row_0_dropped, "Row 0 is a real row: only slot -1 marks a drop, so keep s >= 0 "
                                             "(not s > 0)"),
        Hint.matches(lambda y, slots, w: spec.combine(
                         y, torch.where(slots >= 0, torch.arange(slots.numel(), dtype=slots.dtype,
                                                                 device=slots.device).view(slots.shape), slots), w),
                     "The rows were read in token order: read y_sorted at row slot_of[t, j]"),
    ],
)
check_task1 = COMBINE.checker()


# ------------------------------------------------------------------ task 4: the persistent grouped GEMM

#: side of a tile of task 4 (and of its thread block): 4 x 4 threads under the simulator
QUEUE_TILE = runtime.pick(4, 16)


def queue_blocks(size) -> int:
    """Blocks of task 4's grid: far fewer than its tasks, and not the same at every size
    (a kernel that does one task per block, or assumes a grid, shows)."""
    rows_per_expert = size[0]
    return runtime.pick(2 + sum(rows_per_expert) % 2, 48 + sum(rows_per_expert) % 17)


def tile_table(rows_per_expert, tile: int = QUEUE_TILE):
    """(offsets, tile_group, tile_row_start) for experts with these row counts: expert e owns
    rows offsets[e]:offsets[e + 1] and ceil(rows / tile) row tiles; the table has
    rows // tile + E entries (the bound the kernels size their grids by), -1 marking the
    spare ones at its end."""
    counts = torch.tensor(rows_per_expert, dtype=torch.int64)
    E = counts.numel()
    offsets = torch.zeros(E + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    max_tiles = int(counts.sum()) // tile + E
    tile_group = torch.full((max_tiles,), -1, dtype=torch.int32)
    tile_row_start = torch.zeros(max_tiles, dtype=torch.int32)
    t = 0
    for e in range(E):
        for first in range(int(offsets[e]), int(offsets[e + 1]), tile):
            tile_group[t], tile_row_start[t] = e, first
            t += 1
    return offsets.to(torch.int32), tile_group, tile_row_start


def _persistent_inputs(size, gen):
    """Rows in expert order with their expert's products to do. Sizes: (rows per expert, K,
    N), with an empty expert, experts whose rows end mid-tile (the last one too, so an
    unguarded row runs past the end) and K, N that are not multiples of the tile."""
    rows_per_expert, K, N = size
    a = torch.randn(sum(rows_per_expert), K, generator=gen)
    w = torch.randn(len(rows_per_expert), K, N, generator=gen) / max(K, 1) ** 0.5
    return (a, w) + tile_table(rows_per_expert)


@reference
def persistent_gemm_reference(a, w, offsets, tile_group, tile_row_start):
    """out[rows of e] = a[rows of e] @ w[e], in float64 (the tile table is the kernel's help)."""
    out = torch.empty(a.shape[0], w.shape[2], dtype=a.dtype, device=a.device)
    bounds = offsets.tolist()
    for e in range(w.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        out[lo:hi] = (a[lo:hi].double() @ w[e].double()).to(a.dtype)
    return out


def _launch_persistent(kernel_, inputs, outputs, size):
    """A fresh queue (a counter at 0) and a small persistent grid of QUEUE_TILE^2-thread blocks."""
    queue = torch.zeros(1, dtype=torch.int32, device=runtime.device)
    kernel_[queue_blocks(size), (QUEUE_TILE, QUEUE_TILE)](*inputs, queue, outputs[0])


def _tile_slices(case):
    """(rows, columns) slices of every real (row tile, column tile) of the case."""
    _, w, offsets, tile_group, tile_row_start = (x.cpu() for x in case.inputs)
    N = w.shape[2]
    for r, g in enumerate(tile_group.tolist()):
        if g < 0:
            continue
        first = int(tile_row_start[r])
        rows = slice(first, min(first + QUEUE_TILE, int(offsets[g + 1])))
        for c0 in range(0, N, QUEUE_TILE):
            yield rows, slice(c0, min(c0 + QUEUE_TILE, N))


def _tiles_written(case) -> dict:
    """How the real tiles were written: "whole", "none", "part" (a row of the tile only
    partly written) and "rows" (some of its rows wholly written, others not at all)."""
    tally = {"whole": 0, "none": 0, "part": 0, "rows": 0}
    written = ~case.unwritten
    if written.numel() == 0:
        return tally
    for rows, cols in _tile_slices(case):
        tile = written[rows, cols]
        if bool(tile.all()):
            tally["whole"] += 1
        elif not bool(tile.any()):
            tally["none"] += 1
        elif bool((tile.any(1) & ~tile.all(1)).any()):
            tally["part"] += 1
        else:
            tally["rows"] += 1
    return tally


def _rows_as_if_aligned(a, w, offsets, tile_group, tile_row_start):
    """What a kernel computes that takes row tile r's rows as r * TILE + ty: rows that no
    tile reaches that way stay NaN (each row is reached by one tile at most, so the result
    does not depend on the order the tiles ran in)."""
    out = torch.full((a.shape[0], w.shape[2]), float("nan"), dtype=torch.float64)
    a, w, bounds = a.cpu().double(), w.cpu().double(), offsets.tolist()
    for r, g in enumerate(tile_group.tolist()):
        if g >= 0:
            rows = slice(r * QUEUE_TILE, min((r + 1) * QUEUE_TILE, bounds[g + 1]))
            out[rows] = a[rows] @ w[g]
    return out.float()


def _matches_aligned_rows(case) -> bool:
    if not isinstance(case.output, torch.Tensor) or case.output.shape != case.expected[0].shape:
        return False
    wrong = _rows_as_if_aligned(*case.inputs)
    out = case.output.cpu()
    same_gaps = torch.equal(torch.isnan(out), torch.isnan(wrong))
    right = case.expected[0].cpu()
    differs = bool(torch.isnan(wrong).any()) or not torch.allclose(wrong, right, rtol=1e-4, atol=1e-4)
    return same_gaps and differs and torch.allclose(out.nan_to_num(), wrong.nan_to_num(), rtol=1e-4, atol=1e-4)


def _whole_tiles_missing(case) -> bool:
    """Some tiles whole, the others not written at all: tasks never taken. (A kernel that
    takes one task per block still computes the first tiles.)"""
    tally = _tiles_written(case)
    return (case.unwritten_only and tally["whole"] > 0 and tally["none"] > 0 and tally["part"] == tally["rows"] == 0
            and not _matches_aligned_rows(case))


def _nothing_written(case) -> bool:
    return case.error is None and not case.findings and bool(case.unwritten.all()) and case.unwritten.numel() > 0


def _tiles_partly_written(case) -> bool:
    return _tiles_written(case)["part"] > 0


def _rows_misplaced(case) -> bool:
    """Every element written but some wrong, tiles with whole rows missing, or the rows of
    a kernel that takes experts' rows as aligned to tiles: rows went to the wrong place."""
    if case.error is not None or case.findings or case.frame_touched:
        return False
    return not bool(case.unwritten.any()) or _tiles_written(case)["rows"] > 0 or _matches_aligned_rows(case)


def _threads_disagree(case) -> bool:
    return any(f.kind == "divergent barrier" for f in case.findings)


def _all_with_expert_0(a, w, offsets, tile_group, tile_row_start):
    return (a.double() @ w[0].double()).to(a.dtype)


def _k_tail_dropped(a, w, offsets, tile_group, tile_row_start):
    """The products over the first K - K % QUEUE_TILE terms only."""
    K = a.shape[1] - a.shape[1] % QUEUE_TILE
    return persistent_gemm_reference.__wrapped__(a[:, :K].contiguous(), w[:, :K].contiguous(), offsets,
                                                 tile_group, tile_row_start)


PERSISTENT_GEMM = Task(
    chapter="11", number=4, title="a persistent grouped GEMM: blocks pull tiles from a queue", kind=KERNEL,
    reference=persistent_gemm_reference, make_inputs=_persistent_inputs,
    # (rows per expert, K, N): experts whose rows end mid-tile, the last one too (an
    # unguarded row runs past the end); empty experts; K and N that end mid-tile. Under the
    # simulator the grid has 2 or 3 blocks for up to 22 tasks. ((3, 0, 6, 5), 6, 5), 14
    # tasks, goes first: its full tiles tell the mistakes apart (a 1 x 1 output cannot)
    sizes=Sizes(sim=[((3, 0, 6, 5), 6, 5), ((1,), 1, 1), ((9, 4, 0, 13, 1), 9, 7), ((17,), 5, 3)],
                hidden=[((5, 7, 3), 7, 9), ((2, 0, 0, 11), 3, 6)],
                gpu=[((1000, 0, 2049, 777, 300, 1, 512, 1023), 257, 129)]),
    launch=_launch_persistent, rtol=1e-4, atol=1e-4, own_kernels=(moe_kernels,),
    candidate_name="persistent_gemm_kernel", solution="persistent_gemm_kernel",
    hints=[
        Hint(lambda case: case.error is not None or case.frame_touched,
             "Guard the rows: the rows of row tile r are tile_row_start[r] + ty, and they stop at "
             "offsets[g + 1] (the next expert's rows, or the end of out); guard columns by out.shape[1]"),
        Hint(_whole_tiles_missing,
             "Whole tiles were never computed: the grid has far fewer blocks than tasks, so a persistent "
             "block must keep taking tasks (the leader's q = cuda.atomic.add(queue, 0, 1)) until q reaches the "
             "number of tasks, row tiles x column tiles"),
        Hint(_nothing_written,
             "Nothing was written. Only the block's leader takes a task, q = cuda.atomic.add(queue, 0, 1), and "
             "puts it in shared memory; then every thread of the block computes its element of that task's "
             "tile, and the block loops until q reaches the number of tasks"),
        Hint(_tiles_partly_written,
             "Tiles were only partly computed: only the block's leader takes a task, shares it through shared "
             "memory (a cuda.syncthreads() after it), and the whole block computes that one tile"),
        Hint.matches(_all_with_expert_0, "Every tile used expert 0's weights: row tile r belongs to expert "
                                         "g = tile_group[r], so multiply by w[g]"),
        Hint.matches(_k_tail_dropped, "The last partial step along K was dropped: loop k0 over range(0, K, "
                                      "TILE) and load zeros past K"),
        Hint(_threads_disagree,
             "The block's threads disagreed on their task, so a cuda.syncthreads() is missing around "
             "task[0]: the leader writes it, a barrier, everyone reads it, a barrier, and only then may the "
             "leader take the next"),
        Hint(_rows_misplaced,
             "Rows went to the wrong place: row tile r covers rows tile_row_start[r] + ty (experts' rows "
             "are not aligned to tiles), up to offsets[g + 1], times w[g] with g = tile_group[r]"),
    ],
)
check_task4 = PERSISTENT_GEMM.checker()


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes of each task. tests/chNN_slug/test_chNN_planted.py requires every one to be
# rejected with feedback containing its `expect` phrase.


# -- task 3 (permutation)
def _make_permutation_kernels(mistake=None):
    """(histogram, scan, scatter) kernels, right or with one mistake."""
    plain_histogram, inclusive, short_scan, unclaimed_row, token_ids = (
        mistake == m for m in ("plain_histogram", "inclusive", "short_scan", "unclaimed_row", "token_ids"))

    @kernel
    def histogram(topk_idx, counts):
        a = cuda.grid(1)
        k = topk_idx.shape[1]
        if a < topk_idx.shape[0] * k:
            e = topk_idx[a // k, a % k]
            if plain_histogram:
                counts[e] += 1                      # threads of one expert race
            else:
                cuda.atomic.add(counts, e, 1)

    @kernel
    def scan(counts, offsets):
        if cuda.grid(1) == 0:
            total = 0
            for e in range(counts.size):
                if inclusive:
                    total += counts[e]
                    offsets[e] = total
                else:
                    offsets[e] = total
                    if not (short_scan and e == counts.size - 1):
                        total += counts[e]          # short_scan: the last count is left out
            offsets[counts.size] = total

    @kernel
    def scatter(topk_idx, offsets, cursor, sorted_assignment, slot_of):
        a = cuda.grid(1)
        k = topk_idx.shape[1]
        if a < topk_idx.shape[0] * k:
            e = topk_idx[a // k, a % k]
            if unclaimed_row:
                rank = cursor[e]                    # read, then write: two threads get one row
                cursor[e] = rank + 1
            else:
                rank = cuda.atomic.add(cursor, e, 1)
            row = offsets[e] + rank
            sorted_assignment[row] = a // k if token_ids else a
            slot_of[a // k, a % k] = row

    return histogram, scan, scatter


def _scan_through_raw_memory(counts, offsets):
    """The exclusive scan on the host, through the tensors' raw memory (ctypes on data_ptr):
    no torch call computes, so only the refusal of data_ptr itself catches it."""
    n = counts.numel()
    raw_counts = (ctypes.c_int32 * n).from_address(counts.data_ptr())
    raw_offsets = (ctypes.c_int32 * (n + 1)).from_address(offsets.data_ptr())
    running = 0
    for e in range(n):
        raw_offsets[e] = running
        running += raw_counts[e]
    raw_offsets[n] = running


def _make_permute(mistake=None, fixed_blocks=None, scan_on_host=False, scan_through_ctypes=False):
    histogram, scan, scatter = _make_permutation_kernels(mistake)

    def permute(topk_idx, num_experts):
        T, k = topk_idx.shape
        dev = topk_idx.device
        counts = torch.zeros(num_experts, dtype=torch.int32, device=dev)
        offsets = torch.zeros(num_experts + 1, dtype=torch.int32, device=dev)
        cursor = torch.zeros(num_experts, dtype=torch.int32, device=dev)
        sorted_assignment = torch.full((T * k,), -1, dtype=torch.int32, device=dev)
        slot_of = torch.full((T, k), -1, dtype=torch.int32, device=dev)
        blocks = fixed_blocks or math.ceil(T * k / 32)
        histogram[blocks, 32](topk_idx, counts)
        if scan_on_host:                            # the scan finished on the host
            running = 0
            for e, c in enumerate(counts.tolist()):
                offsets[e] = running
                running += c
            offsets[num_experts] = running
        elif scan_through_ctypes:
            _scan_through_raw_memory(counts, offsets)
        else:
            scan[1, 1](counts, offsets)
        scatter[blocks, 32](topk_idx, offsets, cursor, sorted_assignment, slot_of)
        return counts, offsets, sorted_assignment, slot_of

    return permute


def _permute_by_reference(topk_idx, num_experts):
    return permutation_reference(topk_idx, num_experts)


def _permute_by_package(topk_idx, num_experts):
    p = moe_kernels.permute(topk_idx, num_experts)
    return p.counts, p.offsets, p.sorted_assignment, p.slot_of


def _permute_by_argsort(topk_idx, num_experts):
    flat = topk_idx.flatten()
    counts = torch.bincount(flat, minlength=num_experts).to(torch.int32)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0).to(torch.int32)])
    order = torch.argsort(flat, stable=True).to(torch.int32)
    slot_of = torch.empty_like(order)
    slot_of[order.long()] = torch.arange(order.numel(), dtype=torch.int32, device=order.device)
    return counts, offsets, order, slot_of.view(topk_idx.shape)


# -- task 2 (score cache)
class _DelegatesToScoreCache(ExpertCache):
    """Wraps the package's ScoreCache instead of subclassing it."""

    def __init__(self, layers, experts, capacity, alpha=0.5, top_p=None):
        super().__init__(layers, experts, capacity)
        self.inner = ScoreCache(layers, experts, capacity, alpha=alpha, top_p=top_p)

    def observe(self, layer, mean_probs, needed):
        self.inner.observe(layer, mean_probs, needed)

    def victim(self, layer, pinned):
        self.inner.cached = self.cached
        return self.inner.victim(layer, pinned)


class _SubclassesScoreCache(ScoreCache):
    pass


def _recompiled_score_cache():
    """The package's ScoreCache compiled again from its source under another name: no
    subclass, and none of the package's (marked) functions runs."""
    source = inspect.getsource(ScoreCache).replace("class ScoreCache(", "class RecompiledCache(", 1)
    namespace = dict(vars(inspect.getmodule(ScoreCache)))
    exec(compile(source, "<recompiled>", "exec"), namespace)
    return namespace["RecompiledCache"]


# -- task 1 (combine)
def _make_combine(mistake=None):
    unweighted, no_drop_check, swapped_weights, into_out, thread_index, swapped_axes, off_by_one, \
        token_order, renormalized, positive_slot = (
            mistake == m for m in ("unweighted", "no_drop_check", "swapped_weights", "into_out", "thread_index",
                                   "swapped_axes", "off_by_one", "token_order", "renormalized", "positive_slot"))

    @kernel
    def combine(y_sorted, slot_of, topk_weight, out):
        t, c = cuda.grid(2)
        if swapped_axes:
            c, t = cuda.grid(2)
        if thread_index:
            t, c = cuda.threadIdx.x, cuda.threadIdx.y   # every block redoes block 0's elements
        rows = out.shape[0] + 1 if off_by_one else out.shape[0]
        if t < rows and c < out.shape[1]:
            k = slot_of.shape[1]
            acc = float32(0.0)
            kept_weight = float32(0.0)
            for j in range(k):
                s = slot_of[t, j]
                if token_order:
                    s = t * k + j if s >= 0 else s  # reads rows as if nothing were permuted
                if (s > 0 if positive_slot else s >= 0) or no_drop_check:
                    weight = float32(1.0) if unweighted else topk_weight[t, k - 1 - j if swapped_weights else j]
                    kept_weight += weight
                    if into_out:
                        out[t, c] += weight * y_sorted[s, c]   # out was never zeroed
                    else:
                        acc += weight * y_sorted[s, c]
            if renormalized and kept_weight > float32(0.0):
                acc /= kept_weight                  # the dropped weight handed to the kept rows
            if not into_out:
                out[t, c] = acc

    return combine


@kernel
def _combine_whole_row(y_sorted, slot_of, topk_weight, out):
    t = cuda.grid(2)[0]
    if t < out.shape[0]:
        for c in range(out.shape[1]):                    # every thread of the row writes it all
            acc = float32(0.0)
            for j in range(slot_of.shape[1]):
                s = slot_of[t, j]
                if s >= 0:
                    acc += topk_weight[t, j] * y_sorted[s, c]
            out[t, c] = acc


# -- task 4 (persistent grouped GEMM)
_QT = QUEUE_TILE


def _make_persistent(mistake=None):
    """Task 4's kernel, right or with one mistake (a shared-memory tiled product per task)."""
    one_task, every_thread, no_sync_after_take, no_sync_before_next, expert_0, k_tail, no_row_guard, \
        aligned_rows = (mistake == m for m in ("one_task", "every_thread", "no_sync_after_take",
                                               "no_sync_before_next", "expert_0", "k_tail", "no_row_guard",
                                               "aligned_rows"))

    @kernel
    def persistent(a, w, offsets, tile_group, tile_row_start, queue, out):
        a_tile = cuda.shared.array((_QT, _QT), float32)
        w_tile = cuda.shared.array((_QT, _QT), float32)
        task = cuda.shared.array(1, int32)
        ty = cuda.threadIdx.y
        tx = cuda.threadIdx.x
        leader = tx == 0 and ty == 0
        K = a.shape[1]
        N = out.shape[1]
        col_tiles = (N + _QT - 1) // _QT
        tasks = tile_group.size * col_tiles
        k_end = K - K % _QT if k_tail else K
        first = True
        while True:
            if one_task:
                if not first:
                    return
                q = cuda.blockIdx.x                  # the grid's share of tasks only
            elif every_thread:
                q = cuda.atomic.add(queue, 0, 1)     # each thread its own task
            else:
                if leader:
                    task[0] = cuda.atomic.add(queue, 0, 1)
                if not no_sync_after_take:
                    cuda.syncthreads()
                q = task[0]
                if not no_sync_before_next:
                    cuda.syncthreads()
            first = False
            if q >= tasks:
                return
            r = q // col_tiles
            g = tile_group[r]
            if g < 0:
                continue                             # a spare row tile: no rows
            e = 0 if expert_0 else g
            row = (r * _QT if aligned_rows else tile_row_start[r]) + ty
            row_end = a.shape[0] if no_row_guard else offsets[g + 1]
            col = (q % col_tiles) * _QT + tx
            acc = float32(0.0)
            for k0 in range(0, k_end, _QT):
                if every_thread:                     # no tiles shared: a plain dot product
                    for kk in range(k0, min(k0 + _QT, k_end)):
                        if row < row_end and col < N:
                            acc += a[row, kk] * w[e, kk, col]
                    continue
                a_tile[ty, tx] = a[row, k0 + tx] if (row < row_end and k0 + tx < K) else float32(0.0)
                w_tile[ty, tx] = w[e, k0 + ty, col] if (k0 + ty < K and col < N) else float32(0.0)
                cuda.syncthreads()
                for i in range(_QT):
                    acc += a_tile[ty, i] * w_tile[i, tx]
                cuda.syncthreads()
            if (no_row_guard or row < row_end) and col < N:
                out[row, col] = acc

    return persistent


PERMUTATION.planted = [
    Planted("a plain += histogram", _make_permute("plain_histogram"), "without an atomic", simulator_only=True),
    Planted("a row claimed without an atomic", _make_permute("unclaimed_row"), "without an atomic",
            simulator_only=True),
    Planted("an inclusive scan", _make_permute("inclusive"), "inclusive", simulator_only=True),
    Planted("the scan leaves out the last expert", _make_permute("short_scan"), "offsets[E], the total"),
    Planted("one hard-coded block of 32", _make_permute(fixed_blocks=1), "enough threads"),
    Planted("a grid hard-coded to 4 blocks of 32", _make_permute(fixed_blocks=4), "enough threads"),
    Planted("the token stored instead of the assignment", _make_permute("token_ids"), "duplicated"),
    Planted("the scan finished on the host", _make_permute(scan_on_host=True), "on the host"),
    # simulator only: on a GPU data_ptr is a device address, which ctypes must never read
    Planted("the scan on the host through ctypes and data_ptr", _make_permute(scan_through_ctypes=True),
            "data_ptr", simulator_only=True),
    Planted("calls the reference", _permute_by_reference, "reference"),
    Planted("the package's own permute", _permute_by_package, "reference"),
    Planted("torch's bincount, cumsum and argsort", _permute_by_argsort, "as kernels"),
]
SCORE_CACHE.planted = [Planted(f"score cache: {m}", cls, _POLICY_MISTAKES[m].split(":")[0][:40])
                       for m, cls in _WRONG_POLICIES.items()] + [
    Planted("LRU instead of scores", _LRUWithScoreArguments, "That is LRU"),
    Planted("wraps the package's ScoreCache", _DelegatesToScoreCache, "reference"),
    Planted("subclasses ScoreCache", _SubclassesScoreCache, "do not subclass ScoreCache"),
    Planted("ScoreCache's source recompiled", _recompiled_score_cache(), "the course's own ScoreCache"),
    Planted("not a class", lambda *args: None, "pass your class"),
]
COMBINE.planted = [
    Planted("weights ignored", _make_combine("unweighted"), "unweighted sum"),
    Planted("dropped slots (-1) not skipped", _make_combine("no_drop_check"), "slot -1", simulator_only=True),
    Planted("weights of the other choice", _make_combine("swapped_weights"), "weights are swapped"),
    Planted("kept weights renormalized", _make_combine("renormalized"), "renormalize"),
    Planted("s > 0 taken for a kept slot", _make_combine("positive_slot"), "s >= 0"),
    Planted("+= into out, never zeroed", _make_combine("into_out"), "out starts as NaN"),
    Planted("thread index instead of grid index", _make_combine("thread_index"), "cuda.grid(2)"),
    Planted("t and c swapped", _make_combine("swapped_axes"), "swapped"),
    Planted("bounds check one token too far", _make_combine("off_by_one"), "Guard the write",
            simulator_only=True),
    Planted("slot_of ignored (token order)", _make_combine("token_order"), "slot_of[t, j]"),
    Planted("every thread writes its whole row", _combine_whole_row, "without an atomic", simulator_only=True),
    Planted("the package's own kernel", moe_kernels.combine_kernel, "course package's own"),
]
PERSISTENT_GEMM.planted = [
    Planted("one task per block (not persistent)", _make_persistent("one_task"), "keep taking tasks"),
    Planted("every thread takes its own task", _make_persistent("every_thread"), "only the block's leader"),
    Planted("no barrier after the leader takes a task", _make_persistent("no_sync_after_take"),
            "cuda.syncthreads() is missing", simulator_only=True),
    Planted("no barrier before the leader takes the next", _make_persistent("no_sync_before_next"),
            "cuda.syncthreads() is missing", simulator_only=True),
    Planted("expert 0's weights for every tile", _make_persistent("expert_0"), "multiply by w[g]"),
    Planted("the last partial step along K dropped", _make_persistent("k_tail"), "along K"),
    # simulator only: the rows past the end are written out of bounds
    Planted("rows past the expert's end not guarded", _make_persistent("no_row_guard"), "offsets[g + 1]",
            simulator_only=True),
    Planted("rows taken as r * TILE (experts aligned to tiles)", _make_persistent("aligned_rows"),
            "tile_row_start[r]"),
    Planted("the package's own kernel", moe_kernels.grouped_gemm_naive_kernel, "course package's own"),
]
