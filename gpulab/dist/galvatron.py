"""Galvatron's search for a hybrid parallel plan: a cost model and a dynamic programme.

Galvatron (arXiv 2504.03662; the search itself is Miao et al., "Galvatron: Efficient
Transformer Training over Multiple GPUs Using Automatic Parallelism", VLDB 2023, arXiv
2211.13878) picks, for each layer, a strategy: a tensor-parallel degree ``tp`` and a
data-parallel degree ``dp`` (``tp * dp`` GPUs of a pipeline stage), plain data parallel or
sharded (FSDP / ZeRO-3), with or without activation checkpointing. Its constants, as its
code (``galvatron/core/cost_model.py`` of Hetu-Galvatron) writes them:

* memory: model states are 4x the fp32 parameter bytes (parameter, gradient and Adam's
  two moments: 16 bytes per parameter), divided by ``tp``, and with FSDP by ``dp`` too
  (``1/dp + 0.003``); activations per sample from the profile, per ``tp`` degree;
* time: backward = 2x forward (``bct_fct_coe = 2``), one more forward with checkpointing
  (``bct += fct``); forward time from the profile, linear in ``batch / tp``;
* data-parallel all-reduce of ``2 (dp-1)/dp`` of the parameter bytes, overlapped with the
  backward pass (both slowed by 1.3 while they overlap: ``dp_overlap_coe``,
  ``bct_overlap_coe``); FSDP adds an all-gather of half that (``fsdp_allgather_message_size``);
* tensor parallel: 4 collectives per layer (``tp_comm_times = 4``), each ``2 (tp-1)/tp`` of
  ``b s h`` activations (x1.5 with checkpointing, which redoes the forward's);
* mixed precision halves every message; pipeline stages exchange ``b s h`` activations;
  a pipeline of ``p`` stages and ``m`` micro-batches costs ``(p + m - 1) / (p m)`` of its
  compute (the bubble).

The dynamic programme over the layers of one stage, with memory in whole MiB:

    C[i][m][s] = t(i, s) + min over s' of ( C[i-1][m - mem(i, s)][s'] + t_switch(s', s) )

the least time of layers 0..i with layer i on strategy s and at most m MiB used; the
answer is ``min_s C[L-1][budget][s]``. :func:`brute_force_plan` tries every plan and must
agree. :func:`search` is the outer loop: pipeline degrees ``pp`` and ``tp * dp = N / pp``
in powers of two (Galvatron's decision tree), micro-batch counts, each stage planned by
the programme, the fastest plan that fits kept.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Strategy", "LayerProfile", "Hardware", "strategies_for", "layer_memory_mib", "layer_time_ms",
           "switch_time_ms", "dp_plan", "brute_force_plan", "greedy_plan", "plan_cost", "search", "Plan",
           "MODEL_STATE_FACTOR", "BWD_FWD_RATIO", "OVERLAP_SLOWDOWN", "TP_COLLECTIVES_PER_LAYER",
           "FSDP_EPSILON", "MIB"]

MIB = 1024 * 1024
#: model states per fp32 parameter byte: parameter, gradient, Adam m and v (16 B per param)
MODEL_STATE_FACTOR = 4
#: backward time per forward time
BWD_FWD_RATIO = 2.0
#: slowdown of computation and of the all-reduce while they overlap
OVERLAP_SLOWDOWN = 1.3
#: tensor-parallel collectives per transformer layer (two per half-block, forward and backward)
TP_COLLECTIVES_PER_LAYER = 4
#: FSDP's model states are 1/dp + this (a bias so memory is not under-predicted)
FSDP_EPSILON = 0.003


@dataclass(frozen=True, order=True)
class Strategy:
    """One layer's parallel strategy on a pipeline stage of ``tp * dp`` GPUs."""
    tp: int = 1
    dp: int = 1
    fsdp: bool = False
    ckpt: bool = False

    def __post_init__(self):
        for name in ("tp", "dp"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")

    @property
    def name(self) -> str:
        return f"tp{self.tp}-dp{self.dp}" + ("-fsdp" if self.fsdp else "") + ("-ckpt" if self.ckpt else "")


@dataclass(frozen=True)
class LayerProfile:
    """What the profiler measured for one layer (Galvatron profiles a layer type once).

    ``fwd_ms``: (slope, intercept) of the forward time against samples per GPU (``batch / tp``);
    ``param_mib``: fp32 parameter MiB of the layer; ``act_mib``: activation MiB per sample,
    by tp degree (``{1: .., 2: .., ...}``) and ``act_ckpt_mib`` with checkpointing (only the
    layer's input is kept); ``seq``, ``hidden``: for message sizes."""
    fwd_ms: tuple[float, float]
    param_mib: float
    act_mib: dict
    act_ckpt_mib: float
    seq: int
    hidden: int


@dataclass(frozen=True)
class Hardware:
    """Collective cost per MiB, measured by the profiler: ``allreduce_ms_per_mib[n]`` for a
    group of n GPUs, ``p2p_ms_per_mib`` between neighbouring stages."""
    allreduce_ms_per_mib: dict
    p2p_ms_per_mib: float = 0.0
    mixed_precision: bool = True

    def allreduce(self, n: int) -> float:
        if n == 1:
            return 0.0
        if n not in self.allreduce_ms_per_mib:
            raise ValueError(f"no all-reduce profile for groups of {n} (have {sorted(self.allreduce_ms_per_mib)})")
        return self.allreduce_ms_per_mib[n]


def strategies_for(gpus: int, fsdp: bool = True, ckpt: bool = True) -> list[Strategy]:
    """Every strategy of a stage of ``gpus`` GPUs: ``tp * dp = gpus`` in powers of two,
    FSDP only where ``dp > 1``, each with and without checkpointing."""
    if gpus < 1 or gpus & (gpus - 1):
        raise ValueError(f"a stage needs a power-of-two number of GPUs, got {gpus}")
    out = []
    tp = 1
    while tp <= gpus:
        dp = gpus // tp
        for f in ((False, True) if fsdp and dp > 1 else (False,)):
            for c in ((False, True) if ckpt else (False,)):
                out.append(Strategy(tp, dp, f, c))
        tp *= 2
    return out


def layer_memory_mib(layer: LayerProfile, s: Strategy, batch: int) -> float:
    """MiB one GPU holds for this layer: model states (/tp, and /dp with FSDP) plus the
    activations of its ``batch / dp`` samples."""
    states = MODEL_STATE_FACTOR * layer.param_mib / s.tp
    if s.fsdp:
        states *= 1 / s.dp + FSDP_EPSILON
    per_sample = layer.act_ckpt_mib if s.ckpt else layer.act_mib[s.tp]
    return states + per_sample * batch / s.dp


def layer_time_ms(layer: LayerProfile, s: Strategy, batch: int, hw: Hardware) -> float:
    """Forward + backward (+ recompute) of the layer on ``batch`` samples (the stage's
    share: ``batch / dp`` per data-parallel rank, split over ``tp``), with its collectives."""
    samples = batch / s.dp
    slope, intercept = layer.fwd_ms
    fwd = slope * samples / s.tp + intercept
    bwd = BWD_FWD_RATIO * fwd + (fwd if s.ckpt else 0.0)
    half = 0.5 if hw.mixed_precision else 1.0
    # data parallel: all-reduce of 2(dp-1)/dp of the parameter bytes, overlapped with backward
    dp_mib = 2 * (s.dp - 1) / s.dp * layer.param_mib / s.tp * half
    dp_ms = dp_mib * hw.allreduce(s.dp)
    if dp_ms > 0:
        overlap = min(dp_ms, bwd) * OVERLAP_SLOWDOWN
        bwd_total = overlap + abs(dp_ms - bwd)
    else:
        bwd_total = bwd
    fsdp_ms = 0.5 * dp_mib * hw.allreduce(s.dp) if s.fsdp else 0.0
    # tensor parallel: 4 collectives of 2(tp-1)/tp * b s h (fp32 bytes), x1.5 when recomputing
    tp_mib = 2 * (s.tp - 1) / s.tp * samples * layer.seq * layer.hidden * 4 / MIB
    tp_mib *= TP_COLLECTIVES_PER_LAYER * (1.5 if s.ckpt else 1.0) * half
    tp_ms = tp_mib * hw.allreduce(s.tp)
    return fwd + bwd_total + fsdp_ms + tp_ms


def switch_time_ms(a: Strategy, b: Strategy, layer: LayerProfile, batch: int, hw: Hardware) -> float:
    """Re-laying out the activations between consecutive layers whose tensor-parallel
    degrees differ (an all-gather of the smaller layout's shard; 0 when tp is the same)."""
    if a.tp == b.tp:
        return 0.0
    group = max(a.tp, b.tp)
    mib = batch / min(a.dp, b.dp) * layer.seq * layer.hidden * 4 / MIB * (group - 1) / group
    return mib * (0.5 if hw.mixed_precision else 1.0) * hw.allreduce(group)


# ------------------------------------------------------------------ the programmes

def _check_tables(time, mem, switch, budget):
    time, mem = np.asarray(time, dtype=float), np.asarray(mem)
    if time.ndim != 2 or time.shape != mem.shape:
        raise ValueError(f"time and mem must both be [layers, strategies], got {time.shape} and {mem.shape}")
    if not np.issubdtype(mem.dtype, np.integer) or (mem < 0).any():
        raise ValueError("mem must hold non-negative whole MiB (ints)")
    switch = np.zeros((time.shape[1], time.shape[1])) if switch is None else np.asarray(switch, dtype=float)
    if switch.shape != (time.shape[1], time.shape[1]):
        raise ValueError(f"switch must be [strategies, strategies], got {switch.shape}")
    if budget < 0 or int(budget) != budget:
        raise ValueError(f"budget must be a whole number of MiB >= 0, got {budget}")
    return time, mem.astype(int), switch, int(budget)


def dp_plan(time, mem, budget: int, switch=None):
    """The least-time plan under a memory budget: ``(total_ms, [strategy index per layer])``
    or ``(inf, None)`` if no plan fits.

    ``time[i][s]`` and ``mem[i][s]`` (whole MiB) of layer i on strategy s; ``switch[a][b]``
    the cost of layer i-1 on a followed by layer i on b. Runs the recurrence of the module
    docstring over every memory level 0..budget at once (numpy), and walks back the choices."""
    time, mem, switch, budget = _check_tables(time, mem, switch, budget)
    L, S = time.shape
    levels = np.arange(budget + 1)
    C = np.full((budget + 1, S), np.inf)           # C[m][s] for the current layer
    choice = np.zeros((L, budget + 1, S), dtype=int)
    for s in range(S):
        C[levels >= mem[0, s], s] = time[0, s]
    for i in range(1, L):
        nxt = np.full_like(C, np.inf)
        for s in range(S):
            rest = levels - mem[i, s]                 # memory left for layers 0..i-1
            ok = rest >= 0
            # candidates[m, s'] = C[m - mem][s'] + switch[s'][s]
            cand = C[rest[ok]] + switch[:, s][None, :]
            best = cand.argmin(axis=1)
            nxt[ok, s] = time[i, s] + cand[np.arange(len(best)), best]
            choice[i, ok, s] = best
        C = nxt
    s = int(C[budget].argmin())
    total = float(C[budget, s])
    if not math.isfinite(total):
        return math.inf, None
    plan, m = [s], budget
    for i in range(L - 1, 0, -1):
        prev = int(choice[i, m, s])
        m -= int(mem[i, s])
        s = prev
        plan.append(s)
    return total, plan[::-1]


def plan_cost(time, mem, plan, switch=None) -> tuple[float, int]:
    """``(time, memory)`` of a plan (list of strategy indices)."""
    time, mem, switch, _ = _check_tables(time, mem, switch, 0)
    t = sum(time[i, s] for i, s in enumerate(plan)) + sum(switch[a, b] for a, b in zip(plan, plan[1:]))
    return float(t), int(sum(mem[i, s] for i, s in enumerate(plan)))


def brute_force_plan(time, mem, budget: int, switch=None):
    """Every plan tried (S^L of them: tiny problems only); same answer as :func:`dp_plan`."""
    time, mem, switch, budget = _check_tables(time, mem, switch, budget)
    L, S = time.shape
    if S ** L > 2_000_000:
        raise ValueError(f"{S}^{L} plans are too many to try")
    best, best_plan = math.inf, None
    for plan in itertools.product(range(S), repeat=L):
        t, m = plan_cost(time, mem, plan, switch)
        if m <= budget and t < best - 1e-12:
            best, best_plan = t, list(plan)
    return best, best_plan


def greedy_plan(time, mem, budget: int, switch=None):
    """Each layer its fastest strategy that still fits the remaining budget, in order: the
    plausible shortcut the programme beats (it ignores switches and later layers)."""
    time, mem, switch, budget = _check_tables(time, mem, switch, budget)
    plan, left = [], budget
    for i in range(time.shape[0]):
        fits = [s for s in range(time.shape[1]) if mem[i, s] <= left]
        if not fits:
            return math.inf, None
        s = min(fits, key=lambda k: time[i, k])
        plan.append(s)
        left -= mem[i, s]
    return plan_cost(time, mem, plan, switch)[0], plan


# ------------------------------------------------------------------ the outer search

@dataclass
class Plan:
    pp: int
    microbatches: int
    batch: int
    strategies: list            # one Strategy per layer
    step_ms: float
    peak_mib: float
    throughput: float           # samples per second
    notes: dict = field(default_factory=dict)


def _powers_of_two(n: int) -> list[int]:
    return [1 << k for k in range(n.bit_length()) if n % (1 << k) == 0]


def search(layers: list[LayerProfile], gpus: int, budget_mib: float, hw: Hardware,
           batches=(8,), max_microbatches: int = 16, other_mib: float = 0.0,
           levels: int = 1024) -> Plan | None:
    """The fastest plan over pipeline degrees, micro-batch counts and batch sizes.

    Pruned like Galvatron's decision tree: ``pp`` a power of two dividing both the GPU
    count and the number of layers; ``tp * dp = gpus / pp``; micro-batches dividing the
    stage batch. Each stage's layers are planned by :func:`dp_plan` on its share of the
    memory (``budget_mib - other_mib``, 1F1B keeping at most ``pp`` micro-batches of
    activations on the first stage). Memory is counted in units of ``budget / levels`` MiB,
    rounded up so a plan never fits by rounding (Galvatron counts whole MiB; a GPU's 140 GiB
    in 1024 levels makes units of 140 MiB, which keeps the programme fast). Returns the
    plan of highest throughput, or None."""
    if gpus < 1 or gpus & (gpus - 1):
        raise ValueError(f"gpus must be a power of two, got {gpus}")
    best = None
    L = len(layers)
    unit = max(budget_mib - other_mib, 1e-9) / levels
    for pp in _powers_of_two(gpus):
        if L % pp:
            continue
        per_stage = L // pp
        strategies = strategies_for(gpus // pp)
        for batch in batches:
            for m in range(1, max_microbatches + 1):
                if batch % m:
                    continue
                micro = batch // m
                in_flight = min(pp, m)        # 1F1B: activations of at most pp micro-batches
                stage_ms, stage_mib, plan = [], [], []
                for stage in range(pp):
                    block = layers[stage * per_stage:(stage + 1) * per_stage]
                    t = [[layer_time_ms(l, s, micro, hw) for s in strategies] for l in block]
                    mem_states = [[layer_memory_mib(l, s, 0) for s in strategies] for l in block]
                    mem_act = [[layer_memory_mib(l, s, micro) - ms for s, ms in zip(strategies, row)]
                               for l, row in zip(block, mem_states)]
                    mem = [[int(math.ceil((a + in_flight * b) / unit)) for a, b in zip(r1, r2)]
                           for r1, r2 in zip(mem_states, mem_act)]
                    sw = [[switch_time_ms(a, b, block[0], micro, hw) for b in strategies] for a in strategies]
                    total, idx = dp_plan(t, mem, int((budget_mib - other_mib) // unit), sw)
                    if idx is None:
                        break
                    stage_ms.append(total)
                    stage_mib.append(plan_cost(t, mem, idx, sw)[1] * unit + other_mib)
                    plan += [strategies[k] for k in idx]
                else:
                    # the slowest stage sets the pace; m micro-batches through pp stages
                    slowest = max(stage_ms)
                    p2p = (pp - 1) * 2 * micro * layers[0].seq * layers[0].hidden * 2 / MIB * hw.p2p_ms_per_mib
                    step = slowest * (pp + m - 1) + p2p * m
                    throughput = batch / (step / 1000)
                    if best is None or throughput > best.throughput:
                        best = Plan(pp, m, batch, plan, step, max(stage_mib), throughput)
    return best
