"""Expert offload (caches, prefetch, hybrid schedule, modelled timeline), MixLoRA and the
trace model, against traces and schedules worked by hand."""
import pytest
import torch

from gpulab.moe import mixlora, offload as off, tracemodel as tm
from gpulab.moe.offload import HAND_TRACE, cache_replay


def _trace(routed, experts, probs=None):
    """routed[step][layer] = list of experts (one token each); probs default: one-hot mean."""
    S, L = len(routed), len(routed[0])
    k = max(len(r) for step in routed for r in step)
    topk = torch.zeros(S, L, k, 1, dtype=torch.long)
    pr = torch.zeros(S, L, k, experts)
    for s in range(S):
        for l in range(L):
            r = routed[s][l]
            for j in range(k):
                e = r[min(j, len(r) - 1)]
                topk[s, l, j, 0] = e
                pr[s, l, j, e] = 1.0
    return off.RoutingTrace(topk, pr if probs is None else probs)


# ------------------------------------------------------------------ caches

def test_score_cache_hand_trace():
    cache = off.ScoreCache(1, 4, 2, alpha=0.5, top_p=2)
    log = cache_replay(cache, HAND_TRACE)
    assert log == [([], []), ([1], [0]), ([2], [1]), ([3], [2]), ([], [1])]
    torch.testing.assert_close(cache.scores[0], torch.tensor([0.015625, 0.171875, 0.3625, 0.25], dtype=torch.float64))
    assert cache.prefetch_candidates(0, 2) == [2, 3]


def test_lru_cache_hand_trace_differs_at_the_end():
    log = cache_replay(off.LRUCache(1, 4, 2), HAND_TRACE)
    assert log == [([], []), ([1], [0]), ([2], [1]), ([3], [2]), ([], [3])]


def test_pinned_experts_are_never_evicted_and_overflow_streams_through():
    c = off.LRUCache(1, 5, 2)
    c.admit(0, 0)
    c.admit(0, 1)
    assert c.admit(0, 2, pinned={0, 1, 2}) is None and c.cached[0] == {0, 1}
    s = off.ScoreCache(1, 3, 1)
    s.admit(0, 0)
    assert s.admit(0, 1, pinned={0}) is None and s.cached[0] == {0}


# ------------------------------------------------------------ hybrid schedule

def test_hybrid_schedule_hand_worked():
    cost = off.CostModel(expert_bytes=1, h2d_gbps=1e-6, gpu_ms_fixed=0, gpu_ms_per_token=0.1,
                         cpu_ms_fixed=0, cpu_ms_per_token=0.5)
    assert cost.copy_ms == pytest.approx(1.0)
    gpu, cpu, g, c = off.hybrid_schedule({0: 10, 1: 1, 2: 5}, {0}, cost)
    assert (gpu, cpu) == ([0, 2], [1]) and g == pytest.approx(1.5) and c == pytest.approx(0.5)
    # a busy copy engine makes the uncached expert cheaper on the CPU
    gpu, cpu, g, c = off.hybrid_schedule({0: 10, 1: 1, 2: 5}, {0}, cost, copy_busy_ms=5.0)
    assert (gpu, cpu) == ([0], [1, 2]) and c == pytest.approx(3.0)


# -------------------------------------------------------------- simulation

def _unit_cost():
    return off.CostModel(expert_bytes=10, h2d_gbps=1e-5, gpu_ms_fixed=0.5, gpu_ms_per_token=0.0)


def test_simulate_hand_worked_timeline():
    tr = _trace([[[0]], [[1]], [[0]]], experts=3)
    r = off.simulate(tr, "lru", capacity=1, cost=_unit_cost())
    assert (r.hits, r.copies, r.bytes_moved) == (0, 3, 30)
    assert r.time_ms == pytest.approx(4.5)
    copies = [(ev["start"], ev["end"]) for ev in r.events if ev["resource"] == "copy (H2D)"]
    assert copies == [(0.0, 1.0), (1.5, 2.5), (3.0, 4.0)]
    r2 = off.simulate(tr, "lru", capacity=2, cost=_unit_cost())
    assert (r2.hits, r2.copies) == (1, 2) and r2.time_ms == pytest.approx(3.5)
    assert r2.hit_rate == pytest.approx(1 / 3)


def test_simulate_prefetch_hand_worked():
    tr = _trace([[[0], [2]]] * 3, experts=3)
    r = off.simulate(tr, "lru", capacity=1, cost=_unit_cost(), prefetch=1)
    # step 0: layer-1 scores are all 0, so expert 0 is prefetched (a wrong guess);
    # from step 1 on the score of expert 2 leads and it is already cached
    assert (r.copies, r.prefetches, r.prefetch_used, r.hits) == (3, 1, 0, 4)


def test_overlap_ms():
    evs = [dict(resource="copy (H2D)", start=0, end=2, label=""),
           dict(resource="GPU compute", start=1, end=3, label=""),
           dict(resource="GPU compute", start=1.5, end=1.8, label="")]
    assert off.overlap_ms(evs) == pytest.approx(1.0)


def test_policies_on_a_recorded_trace():
    torch.manual_seed(0)
    model = tm.TinyMoELM(vocab=32, dim=16, ffn=32, layers=2, experts=6, k=2)
    tm.train_lm(model, steps=8, batch=4, length=16)
    tr = tm.record_trace(model, tm.topic_text(1, 40, vocab=32)[0], tokens_per_step=1)
    assert tr.topk.shape == (40, 2, 1, 2) and tr.probs.shape == (40, 2, 1, 6)
    cost = off.CostModel(expert_bytes=1000)
    for policy in ("lru", "score"):
        for hybrid in (False, True):
            r = off.simulate(tr, policy, capacity=3, cost=cost, prefetch=1, hybrid=hybrid)
            assert r.accesses == sum(len(tr.token_counts(s, l)) for s in range(40) for l in range(2))
            assert 0 <= r.hits <= r.accesses and r.bytes_moved == r.copies * 1000
            assert r.time_ms > 0
    fig = off.timeline_figure(r.events)
    assert len(fig.data) >= 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="capacity"):
        off.LRUCache(1, 4, 0)
    with pytest.raises(ValueError, match="alpha"):
        off.ScoreCache(1, 4, 2, alpha=0)
    with pytest.raises(ValueError, match="unknown policy"):
        off.simulate(_trace([[[0]]], 2), "fifo")
    with pytest.raises(ValueError, match="disagree"):
        off.RoutingTrace(torch.zeros(2, 1, 1, 1, dtype=torch.long), torch.zeros(3, 1, 1, 2))


# ------------------------------------------------------------------ MixLoRA

def test_mixlora_learns_and_keeps_the_base_frozen():
    w_up, w_down, x, y, task = mixlora.make_multitask_data(n=256)
    model = mixlora.MixLoRAFFN(w_up, w_down, num_experts=4, k=2, rank=4)
    assert all(p is not model.w_up for p in model.parameters())
    with torch.no_grad():
        start = torch.nn.functional.mse_loss(model(x)[0], y).item()
    hist = mixlora.train(model, x, y, steps=60)
    assert hist[-1][0] < 0.2 * start
    assert 1.9 < hist[-1][1] < 4.0                # aux loss: k = 2 when balanced, up to E when collapsed
    assert torch.equal(model.w_up, w_up)          # the frozen FFN did not move


def test_mixlora_bad_shapes():
    with pytest.raises(ValueError, match="w_down"):
        mixlora.MixLoRAFFN(torch.randn(8, 4), torch.randn(8, 4))
    with pytest.raises(ValueError, match="k must be"):
        mixlora.MixLoRAFFN(torch.randn(8, 4), torch.randn(4, 8), num_experts=2, k=3)
