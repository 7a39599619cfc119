"""Expert offload: experts live in pinned host memory, a few per layer are cached on the GPU.

When a model's experts do not fit on the GPU, each layer keeps ``capacity`` expert slots
in GPU memory; a routed expert that is not cached must be copied over PCIe (a *miss*)
before the GPU can run it. This module compares, on routing traces recorded from a real
(small) MoE model:

* :class:`LRUCache`: evict the least recently used expert (Mixtral offloading,
  arXiv 2312.17238, keeps an LRU cache of experts per layer);
* :class:`ScoreCache`: HybriMoE's score-based cache (arXiv 2504.05897, "Minus Recent
  Score"): after each routing, the ``top_p`` experts with the highest mean router
  probability get ``S = alpha * s + (1 - alpha) * S`` and all others decay,
  ``S = (1 - alpha) * S``; the cached expert with the lowest ``S`` is evicted;
* prefetch: while layer ``l`` runs, copy the next layer's highest-score experts;
* :func:`hybrid_schedule`: HybriMoE's intra-layer schedule: the GPU takes cached and
  heavily loaded experts from one end of a sorted list, the CPU takes lightly loaded
  uncached experts from the other end, each step giving the next expert to whichever
  side would finish it sooner.

:func:`simulate` replays a trace on a *modelled* machine (copy engine, GPU and CPU as
three serial resources, times from a :class:`CostModel`) and returns hit rate, bytes
moved, time and a timeline. :func:`run_on_gpu` replays it for real: experts in pinned
memory, copies on their own CUDA stream overlapped with compute on the default stream,
CUDA events around everything. :func:`timeline_figure` draws either timeline.

All policy logic is plain Python so it can be checked against traces worked by hand.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

__all__ = [
    "RoutingTrace", "ExpertCache", "LRUCache", "ScoreCache", "CostModel", "hybrid_schedule",
    "SimResult", "simulate", "run_on_gpu", "timeline_figure", "overlap_ms", "measure_h2d_peak",
    "POLICIES", "HAND_TRACE", "cache_replay",
]


# --------------------------------------------------------------------------- traces

@dataclass
class RoutingTrace:
    """Routing decisions of ``S`` steps through ``L`` MoE layers, ``B`` tokens per step.

    ``topk``: (S, L, B, k) int expert ids; ``probs``: (S, L, B, E) router probabilities.
    A decode step is one token (B = 1); a prefill chunk is many.
    """
    topk: torch.Tensor
    probs: torch.Tensor

    def __post_init__(self):
        if self.topk.dim() != 4 or self.probs.dim() != 4:
            raise ValueError("topk must be (steps, layers, tokens, k) and probs (steps, layers, tokens, experts)")
        if self.topk.shape[:3] != self.probs.shape[:3]:
            raise ValueError(f"topk {tuple(self.topk.shape)} and probs {tuple(self.probs.shape)} disagree")

    @property
    def steps(self) -> int:
        return self.topk.shape[0]

    @property
    def layers(self) -> int:
        return self.topk.shape[1]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[3]

    def token_counts(self, step: int, layer: int) -> dict[int, int]:
        """{expert: number of tokens routed to it} at (step, layer), heaviest first."""
        ids, n = torch.unique(self.topk[step, layer].flatten(), return_counts=True)
        pairs = sorted(zip(ids.tolist(), n.tolist()), key=lambda p: (-p[1], p[0]))
        return dict(pairs)

    def mean_probs(self, step: int, layer: int) -> torch.Tensor:
        return self.probs[step, layer].float().mean(0)


# ---------------------------------------------------------------------------- caches

class ExpertCache:
    """``capacity`` GPU slots per layer. Subclasses choose the victim.

    The protocol a replay follows at each (step, layer):

    1. ``observe(layer, mean_probs, needed)``: the routing is known (update scores);
    2. ``lookup(layer, e)`` for each needed expert: True is a hit (and counts as a use);
    3. ``admit(layer, e, pinned)`` for each expert copied in: returns the evicted
       expert or None; experts in ``pinned`` (needed now) are never evicted.
    """

    name = "cache"

    def __init__(self, layers: int, experts: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 expert per layer, got {capacity}")
        self.layers, self.experts, self.capacity = layers, experts, capacity
        self.cached: list[set[int]] = [set() for _ in range(layers)]

    def observe(self, layer: int, mean_probs: torch.Tensor, needed) -> None:
        pass

    def lookup(self, layer: int, expert: int) -> bool:
        return expert in self.cached[layer]

    def victim(self, layer: int, pinned: set[int]) -> int | None:
        """The cached expert to evict, never one in ``pinned``; None if all are pinned."""
        raise NotImplementedError

    def admit(self, layer: int, expert: int, pinned=()) -> int | None:
        """Cache ``expert`` (just copied in); return the expert evicted for it, or None.

        If every cached expert is pinned (more experts routed than slots), ``expert`` is
        used once and not cached (it streams through).
        """
        if expert in self.cached[layer]:
            return None
        evicted = None
        if len(self.cached[layer]) >= self.capacity:
            evicted = self.victim(layer, set(pinned) | {expert})
            if evicted is None:
                return None
            self.cached[layer].discard(evicted)
            self._forget(layer, evicted)
        self.cached[layer].add(expert)
        self._remember(layer, expert)
        return evicted

    def _remember(self, layer, expert):
        pass

    def _forget(self, layer, expert):
        pass

    def prefetch_candidates(self, layer: int, n: int) -> list[int]:
        """The ``n`` experts of ``layer`` this policy expects next (best first)."""
        return []


class LRUCache(ExpertCache):
    """Evict the least recently used expert of the layer (Mixtral offloading)."""

    name = "LRU"

    def __init__(self, layers, experts, capacity):
        super().__init__(layers, experts, capacity)
        self.order: list[OrderedDict] = [OrderedDict() for _ in range(layers)]

    def lookup(self, layer, expert):
        hit = expert in self.cached[layer]
        if hit:
            self.order[layer].move_to_end(expert)     # most recent at the end
        return hit

    def victim(self, layer, pinned):
        for e in self.order[layer]:                   # oldest first
            if e not in pinned:
                return e
        return None

    def _remember(self, layer, expert):
        self.order[layer][expert] = True
        self.order[layer].move_to_end(expert)

    def _forget(self, layer, expert):
        self.order[layer].pop(expert, None)

    def prefetch_candidates(self, layer, n):
        return list(reversed(self.order[layer]))[:n]


class ScoreCache(ExpertCache):
    """HybriMoE's score-based cache ("Minus Recent Score").

    ``observe`` takes the layer's mean router probabilities ``s``; the ``top_p`` experts
    with the largest ``s`` get ``S = alpha * s + (1 - alpha) * S``, every other expert
    ``S = (1 - alpha) * S``. The victim is the unpinned cached expert with the lowest
    ``S`` (lowest id on a tie). Prefetch candidates: the highest ``S`` of a layer.
    HybriMoE's defaults are ``alpha = 0.5`` and ``top_p = 12`` (of 64-160 experts).
    """

    name = "score (HybriMoE)"

    def __init__(self, layers, experts, capacity, alpha: float = 0.5, top_p: int | None = None):
        super().__init__(layers, experts, capacity)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.top_p = min(top_p or experts, experts)
        self.scores = torch.zeros(layers, experts, dtype=torch.float64)

    def observe(self, layer, mean_probs, needed):
        s = mean_probs.to(torch.float64)
        top = torch.topk(s, self.top_p).indices
        raised = torch.zeros(self.experts, dtype=torch.bool)
        raised[top] = True
        row = self.scores[layer]
        row[raised] = self.alpha * s[raised] + (1 - self.alpha) * row[raised]
        row[~raised] = (1 - self.alpha) * row[~raised]

    def victim(self, layer, pinned):
        options = [e for e in sorted(self.cached[layer]) if e not in pinned]
        if not options:
            return None
        return min(options, key=lambda e: (float(self.scores[layer, e]), e))

    def prefetch_candidates(self, layer, n):
        order = sorted(range(self.experts), key=lambda e: (-float(self.scores[layer, e]), e))
        return order[:n]


POLICIES = {"lru": LRUCache, "score": ScoreCache}


#: a trace worked by hand in the lecture: (mean router probabilities of 4 experts, routed
#: experts) per step, one layer. With alpha 0.5, top_p 2 and 2 slots the score cache
#: evicts [], [0], [1], [2], [1]; LRU evicts 3 at the last step instead of 1.
HAND_TRACE = [
    ([0.50, 0.30, 0.10, 0.10], [0, 1]),
    ([0.10, 0.20, 0.60, 0.10], [2, 1]),
    ([0.10, 0.10, 0.20, 0.60], [3, 2]),
    ([0.15, 0.60, 0.05, 0.20], [1, 3]),
    ([0.05, 0.10, 0.60, 0.25], [2]),
]


def cache_replay(cache: ExpertCache, trace, layer: int = 0) -> list[tuple[list[int], list[int]]]:
    """Replay ``[(mean_probs, routed), ...]`` on one layer of ``cache``, following the
    protocol of :class:`ExpertCache`: [(hits, evicted), ...], one pair per step."""
    log = []
    for probs, routed in trace:
        cache.observe(layer, torch.tensor(probs, dtype=torch.float64), set(routed))
        hits = sorted(e for e in routed if cache.lookup(layer, e))
        evicted = []
        for e in routed:
            if e not in hits:
                out = cache.admit(layer, e, pinned=set(routed))
                if out is not None:
                    evicted.append(out)
        log.append((hits, evicted))
    return log


# ------------------------------------------------------------------------ cost model

@dataclass
class CostModel:
    """Times of the three resources, in milliseconds (linear in tokens, as in HybriMoE).

    Defaults sketch a PCIe 4 GPU box: an FP16 expert of a 7B-class MoE (~350 MB... here
    ``expert_bytes`` is whatever the caller's experts weigh), 25 GB/s pinned copies, a
    GPU that runs an expert in a few microseconds per token and a CPU ten times slower.
    """
    expert_bytes: int
    h2d_gbps: float = 25.0
    gpu_ms_per_token: float = 0.002
    gpu_ms_fixed: float = 0.02
    cpu_ms_per_token: float = 0.05
    cpu_ms_fixed: float = 0.05

    @property
    def copy_ms(self) -> float:
        return self.expert_bytes / (self.h2d_gbps * 1e9) * 1e3

    def gpu_ms(self, tokens: int) -> float:
        return self.gpu_ms_fixed + self.gpu_ms_per_token * tokens

    def cpu_ms(self, tokens: int) -> float:
        return self.cpu_ms_fixed + self.cpu_ms_per_token * tokens


def hybrid_schedule(token_counts: dict[int, int], cached: set[int], cost: CostModel,
                    copy_busy_ms: float = 0.0):
    """HybriMoE's intra-layer CPU/GPU split of the routed experts.

    Cached experts (heaviest first) then uncached ones (heaviest first) form one list.
    Each step compares giving the *front* expert to the GPU (plus, if it is uncached,
    waiting for its copy, which queues behind ``copy_busy_ms`` of earlier copies) with
    giving the *back* expert to the CPU, and takes whichever side would finish sooner.
    Returns ``(gpu_experts, cpu_experts, gpu_ms, cpu_ms)`` (each list in run order).
    """
    order = (sorted((e for e in token_counts if e in cached), key=lambda e: (-token_counts[e], e))
             + sorted((e for e in token_counts if e not in cached), key=lambda e: (-token_counts[e], e)))
    gpu, cpu = [], []
    gpu_end = cpu_end = 0.0
    copy_end = copy_busy_ms
    while order:
        front, back = order[0], order[-1]
        gpu_finish = gpu_end + cost.gpu_ms(token_counts[front])
        new_copy_end = copy_end
        if front not in cached:
            new_copy_end = copy_end + cost.copy_ms
            gpu_finish = max(gpu_end, new_copy_end) + cost.gpu_ms(token_counts[front])
        cpu_finish = cpu_end + cost.cpu_ms(token_counts[back])
        if gpu_finish <= cpu_finish:
            gpu.append(order.pop(0))
            gpu_end, copy_end = gpu_finish, new_copy_end
        else:
            cpu.append(order.pop())
            cpu_end = cpu_finish
    return gpu, cpu, gpu_end, cpu_end


# ------------------------------------------------------------------------ simulation

@dataclass
class SimResult:
    policy: str
    accesses: int = 0            # routed (layer, expert) uses the GPU ran or could have run
    hits: int = 0
    copies: int = 0              # experts copied host -> device (demand + prefetch)
    prefetches: int = 0
    prefetch_used: int = 0       # prefetched experts that were then routed before eviction
    cpu_experts: int = 0         # expert runs the hybrid schedule gave to the CPU
    bytes_moved: int = 0
    time_ms: float = 0.0
    copy_ms: float = 0.0         # copy engine busy time
    events: list = field(default_factory=list)   # dicts: resource, start, end, label

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    def row(self) -> dict:
        return {"policy": self.policy, "hit rate": round(self.hit_rate, 3), "copies": self.copies,
                "MB moved": round(self.bytes_moved / 1e6, 2), "CPU experts": self.cpu_experts,
                "time (ms)": round(self.time_ms, 3)}


def _make_cache(policy, trace: RoutingTrace, capacity: int, **kw) -> ExpertCache:
    if isinstance(policy, ExpertCache):
        return policy
    cls = POLICIES.get(policy, policy) if isinstance(policy, str) else policy
    if isinstance(policy, str) and policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)} or pass an ExpertCache")
    return cls(trace.layers, trace.num_experts, capacity, **kw)


def _route_layer(trace: RoutingTrace, step: int, layer: int, cache: ExpertCache,
                 predictor: ExpertCache, res: SimResult):
    """One layer of one step, as both the model and the GPU run see it: the cache policy
    (and the prefetch predictor, when separate) learn the layer's routing, then the routed
    experts are looked up. Returns (tokens per routed expert, routed experts, the cached ones)."""
    counts = trace.token_counts(step, layer)
    needed = set(counts)
    if predictor is not cache:
        predictor.observe(layer, trace.mean_probs(step, layer), needed)
    cache.observe(layer, trace.mean_probs(step, layer), needed)
    hits = {e for e in counts if cache.lookup(layer, e)}
    res.accesses += len(counts)
    res.hits += len(hits)
    return counts, needed, hits


def simulate(trace: RoutingTrace, policy="lru", capacity: int = 2, cost: CostModel | None = None,
             prefetch: int = 0, hybrid: bool = False, record_events: bool = True, **policy_kw) -> SimResult:
    """Replay ``trace`` through an offloaded MoE on a modelled machine.

    Per (step, layer): the routing updates the policy; cached experts are hits; misses
    are copied (serially on the copy engine) and admitted; the GPU runs hits first, then
    each miss once its copy lands. With ``hybrid`` the CPU takes the experts
    :func:`hybrid_schedule` gives it (no copy). With ``prefetch = n``, the next layer's
    ``n`` best-scoring uncached experts are copied after this layer's misses. A layer
    ends when both GPU and CPU are done; the next one starts then.
    """
    cache = _make_cache(policy, trace, capacity, **policy_kw)
    cost = cost or CostModel(expert_bytes=1)
    predictor = cache if isinstance(cache, ScoreCache) else ScoreCache(trace.layers, trace.num_experts, 1)
    name = cache.name + (f" + prefetch {prefetch}" if prefetch else "") + (" + hybrid" if hybrid else "")
    res = SimResult(name)
    now = copy_free = 0.0
    ready_at: dict[tuple[int, int], float] = {}         # (layer, expert) -> copy done time
    prefetched: set[tuple[int, int]] = set()

    def event(resource, start, end, label):
        if record_events:
            res.events.append(dict(resource=resource, start=start, end=end, label=label))

    def copy_in(layer, e, start, why):
        nonlocal copy_free
        begin = max(copy_free, start)
        copy_free = begin + cost.copy_ms
        ready_at[(layer, e)] = copy_free
        res.copies += 1
        res.bytes_moved += cost.expert_bytes
        res.copy_ms += cost.copy_ms
        event("copy (H2D)", begin, copy_free, f"{why} L{layer} E{e}")

    for step in range(trace.steps):
        for layer in range(trace.layers):
            counts, needed, hits = _route_layer(trace, step, layer, cache, predictor, res)
            for e in hits:
                if (layer, e) in prefetched:
                    res.prefetch_used += 1
                    prefetched.discard((layer, e))
            if hybrid:
                busy = max(copy_free - now, 0.0)
                gpu_list, cpu_list, _, _ = hybrid_schedule(counts, hits, cost, busy)
            else:
                gpu_list = sorted(hits, key=lambda e: (-counts[e], e)) + \
                    sorted(needed - hits, key=lambda e: (-counts[e], e))
                cpu_list = []
            for e in gpu_list:
                if e not in hits:
                    copy_in(layer, e, now, "miss")
                    evicted = cache.admit(layer, e, pinned=needed)
                    if evicted is not None:
                        prefetched.discard((layer, evicted))
            if prefetch and layer + 1 < trace.layers:
                for e in predictor.prefetch_candidates(layer + 1, prefetch):
                    if e not in cache.cached[layer + 1]:     # a peek, not a use
                        copy_in(layer + 1, e, now, "prefetch")
                        cache.admit(layer + 1, e)
                        prefetched.add((layer + 1, e))
                        res.prefetches += 1
            gpu_t = now
            for e in gpu_list:
                start = max(gpu_t, ready_at.get((layer, e), 0.0))
                gpu_t = start + cost.gpu_ms(counts[e])
                event("GPU compute", start, gpu_t, f"L{layer} E{e} ({counts[e]} tok)")
            cpu_t = now
            for e in cpu_list:
                cpu_t, start = cpu_t + cost.cpu_ms(counts[e]), cpu_t
                event("CPU compute", start, cpu_t, f"L{layer} E{e} ({counts[e]} tok)")
            res.cpu_experts += len(cpu_list)
            now = max(gpu_t, cpu_t)
    res.time_ms = max(now, 0.0)
    return res


# ----------------------------------------------------------------- timeline helpers

def _union(intervals):
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def overlap_ms(events, a: str = "copy (H2D)", b: str = "GPU compute") -> float:
    """Time during which resources ``a`` and ``b`` were both busy (copy hidden by compute)."""
    ua = _union([(ev["start"], ev["end"]) for ev in events if ev["resource"] == a])
    ub = _union([(ev["start"], ev["end"]) for ev in events if ev["resource"] == b])
    total, i, j = 0.0, 0, 0
    while i < len(ua) and j < len(ub):
        lo, hi = max(ua[i][0], ub[j][0]), min(ua[i][1], ub[j][1])
        total += max(0.0, hi - lo)
        if ua[i][1] < ub[j][1]:
            i += 1
        else:
            j += 1
    return total


def timeline_figure(events, title: str = "", max_events: int = 400):
    """A Gantt chart (plotly) of copies and compute: one row per resource."""
    import plotly.graph_objects as go

    colours = {"copy (H2D)": "#d62728", "GPU compute": "#1f77b4", "CPU compute": "#2ca02c"}
    fig = go.Figure()
    shown = events[:max_events]
    for resource, colour in colours.items():
        evs = [ev for ev in shown if ev["resource"] == resource]
        if not evs:
            continue
        fig.add_trace(go.Bar(
            y=[resource] * len(evs), x=[ev["end"] - ev["start"] for ev in evs],
            base=[ev["start"] for ev in evs], orientation="h", name=resource,
            marker=dict(color=colour, line=dict(width=0.5, color="white")),
            text=[ev["label"] for ev in evs], hovertemplate="%{text}<br>%{base:.3f} ms + %{x:.3f} ms<extra></extra>"))
    fig.update_layout(title=title or "timeline", xaxis_title="time (ms)", barmode="overlay",
                      height=260, showlegend=False)
    return fig


# ----------------------------------------------------------------- real GPU replay

def measure_h2d_peak(nbytes: int = 256 * 2**20, reps: int = 10) -> float:
    """Host-to-device bandwidth (GB/s) of one large copy from pinned memory (median)."""
    if not torch.cuda.is_available():
        raise RuntimeError("measure_h2d_peak needs a CUDA GPU")
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps + 2):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src, non_blocking=True)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times = sorted(times[2:])
    return nbytes / (times[len(times) // 2] * 1e-3) / 1e9


def run_on_gpu(trace: RoutingTrace, w1_host: torch.Tensor, w2_host: torch.Tensor, policy="lru",
               capacity: int = 2, prefetch: int = 0, hidden_seed: int = 0, **policy_kw) -> SimResult:
    """Replay ``trace`` on the GPU for real: copies on a side stream, compute on the main one.

    ``w1_host``: (L, E, H, F) and ``w2_host``: (L, E, F, H) in pinned memory. Each layer
    has ``capacity`` GPU slots; a miss copies the expert into the victim's slot on the
    copy stream and records an event the compute stream waits on (so hits run while
    misses are in flight). Before a slot is overwritten, the copy stream waits for the
    compute that last read it. Times come from CUDA events (ms since the start).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("run_on_gpu needs a CUDA GPU; use simulate() for the modelled timeline")
    if not (w1_host.is_pinned() and w2_host.is_pinned()):
        raise ValueError("expert weights must be in pinned host memory (tensor.pin_memory())")
    L, E, H, F_ = w1_host.shape
    widest = max(len(trace.token_counts(s, l)) for s in range(trace.steps) for l in range(L))
    if widest > capacity:
        raise ValueError(f"a step routes to {widest} experts of one layer but there are only "
                         f"{capacity} GPU slots per layer: raise capacity to at least {widest}")
    cache = _make_cache(policy, trace, capacity, **policy_kw)
    predictor = cache if isinstance(cache, ScoreCache) else ScoreCache(L, E, 1)
    dev = torch.device("cuda")
    slots1 = torch.empty(L, capacity, H, F_, device=dev)
    slots2 = torch.empty(L, capacity, F_, H, device=dev)
    slot_of: list[dict[int, int]] = [dict() for _ in range(L)]
    slot_free: list[list[int]] = [list(range(capacity)) for _ in range(L)]
    last_use: dict[tuple[int, int], torch.cuda.Event] = {}
    copy_stream = torch.cuda.Stream()
    main = torch.cuda.current_stream()
    g = torch.Generator(device="cpu").manual_seed(hidden_seed)
    B = trace.topk.shape[2]
    x = torch.randn(B, H, generator=g).to(dev)
    expert_bytes = (w1_host[0, 0].numel() + w2_host[0, 0].numel()) * w1_host.element_size()
    name = cache.name + (f" + prefetch {prefetch}" if prefetch else "") + " (measured)"
    res = SimResult(name)
    marks = []                                  # (resource, start event, end event, label)
    ready: dict[tuple[int, int], torch.cuda.Event] = {}
    origin = torch.cuda.Event(enable_timing=True)
    origin.record(main)

    def copy_in(layer, e, pinned, why):
        evicted = cache.admit(layer, e, pinned=pinned)
        if evicted is not None:
            slot_free[layer].append(slot_of[layer].pop(evicted))
        slot = slot_free[layer].pop(0)
        slot_of[layer][e] = slot
        with torch.cuda.stream(copy_stream):
            if (layer, slot) in last_use:       # the old expert's compute must finish first
                copy_stream.wait_event(last_use[(layer, slot)])
            s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(copy_stream)
            slots1[layer, slot].copy_(w1_host[layer, e], non_blocking=True)
            slots2[layer, slot].copy_(w2_host[layer, e], non_blocking=True)
            t.record(copy_stream)
        ready[(layer, e)] = t
        marks.append(("copy (H2D)", s, t, f"{why} L{layer} E{e}"))
        res.copies += 1
        res.bytes_moved += expert_bytes

    for step in range(trace.steps):
        topk = trace.topk[step]
        for layer in range(L):
            counts, needed, hits = _route_layer(trace, step, layer, cache, predictor, res)
            order = sorted(hits, key=lambda e: (-counts[e], e)) + sorted(needed - hits, key=lambda e: (-counts[e], e))
            for e in order:
                if e not in hits:
                    copy_in(layer, e, needed, "miss")
            if prefetch and layer + 1 < L:
                for e in predictor.prefetch_candidates(layer + 1, prefetch):
                    if e not in cache.cached[layer + 1]:
                        copy_in(layer + 1, e, set(), "prefetch")
                        res.prefetches += 1
            out = torch.zeros_like(x)
            for e in order:
                tok = (topk[layer] == e).any(-1).nonzero().flatten().to(dev)
                if (layer, e) in ready:
                    main.wait_event(ready[(layer, e)])
                s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(main)
                slot = slot_of[layer][e]
                y = torch.nn.functional.silu(x[tok] @ slots1[layer, slot]) @ slots2[layer, slot]
                out.index_add_(0, tok, y)
                t.record(main)
                last_use[(layer, slot)] = t
                marks.append(("GPU compute", s, t, f"L{layer} E{e} ({counts[e]} tok)"))
            x = torch.tanh(out)                 # the next layer's input, kept in range
    end = torch.cuda.Event(enable_timing=True)
    end.record(main)
    torch.cuda.synchronize()
    for resource, s, t, label in marks:
        res.events.append(dict(resource=resource, start=origin.elapsed_time(s), end=origin.elapsed_time(t), label=label))
    res.time_ms = origin.elapsed_time(end)
    res.copy_ms = sum(ev["end"] - ev["start"] for ev in res.events if ev["resource"] == "copy (H2D)")
    return res
