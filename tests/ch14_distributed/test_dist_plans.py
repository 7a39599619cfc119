"""Schedules are valid and keep their promises; Galvatron's programme equals brute force;
float8 scaling follows its definition; the cost model's constants are Galvatron's."""
import math

import numpy as np
import pytest
import torch

from gpulab.dist import float8 as F8
from gpulab.dist import galvatron as G
from gpulab.dist import pipeline as P
from gpulab.dist.comm import run_threads

# ------------------------------------------------------------------ pipeline schedules


@pytest.mark.parametrize("p,m", [(1, 1), (2, 3), (3, 7), (4, 4), (4, 9), (5, 2)])
def test_schedules_are_valid_and_1f1b_bounds_the_micro_batches_in_flight(p, m):
    gpipe = [P.gpipe_schedule(s, p, m) for s in range(p)]
    ofob = [P.one_f_one_b_schedule(s, p, m) for s in range(p)]
    assert P.validate_schedule(gpipe, m) is None and P.validate_schedule(ofob, m) is None
    for s in range(p):
        assert P.in_flight(gpipe[s]) == m
        assert P.in_flight(ofob[s]) == min(p - s, m)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 3)])
def test_both_schedules_leave_the_bubble_of_the_formula(p, m):
    for schedule in (P.gpipe_schedule, P.one_f_one_b_schedule):
        times = P.simulate_timeline([schedule(s, p, m) for s in range(p)])
        step = max(end for _, end in times.values())
        busy = m * (1 + 2)                     # forward 1, backward 2 per micro-batch
        assert step == pytest.approx(busy * (m + p - 1) / m)      # the ideal pipeline
        assert (step - busy) / step == pytest.approx(P.bubble_fraction(p, m))


def test_bubble_formula_known_values():
    assert P.bubble_fraction(1, 8) == 0
    assert P.bubble_fraction(4, 1) == pytest.approx(3 / 4)
    assert P.bubble_fraction(8, 32) == pytest.approx(7 / 39)


def test_validate_names_a_deadlock_and_a_backward_before_its_forward():
    # stage 0 alternates at once while stage 1 warms up: each waits for the other
    bad = [[("F", 0), ("B", 0), ("F", 1), ("B", 1)], [("F", 0), ("F", 1), ("B", 0), ("B", 1)]]
    assert "deadlock" in P.validate_schedule(bad, 2)
    assert "before F 1" in P.validate_schedule([[("F", 0), ("B", 1), ("F", 1), ("B", 0)]], 2)
    assert "once" in P.validate_schedule([[("F", 0), ("B", 0)]], 2)


def test_a_1f1b_pipeline_runs_on_threads_and_a_mismatched_one_deadlocks():
    from gpulab.dist.comm import Deadlock
    from gpulab.dist.model import ModelConfig, synthetic_batch

    cfg = ModelConfig(n_layers=2)
    tokens, labels = synthetic_batch(cfg, 4)

    def stage(comm, orders):
        model = P.build_stage(cfg, comm.rank, 2)
        return P.run_schedule(model, orders[comm.rank], comm, comm.rank, 2, tokens.split(1), labels.split(1),
                              (1, cfg.max_seq_len, cfg.dim))

    good = [P.one_f_one_b_schedule(s, 2, 4) for s in range(2)]
    assert run_threads(stage, 2, good)[1] > 0
    bad = [[("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2), ("F", 3), ("B", 3)],
           P.gpipe_schedule(1, 2, 4)]
    with pytest.raises(Deadlock, match="waits in recv"):
        run_threads(stage, 2, bad, timeout_s=20)


def test_schedule_errors_are_clear():
    with pytest.raises(ValueError, match="stage must be"):
        P.one_f_one_b_schedule(4, 4, 8)
    with pytest.raises(ValueError, match="at least one"):
        P.gpipe_schedule(0, 0, 1)
    assert P.stage_layers(10, 4, 0) == [0, 1, 2] and P.stage_layers(10, 4, 3) == [8, 9]


# ------------------------------------------------------------------ Galvatron


def random_problem(rng, layers, strategies, budget_hi=14):
    time = rng.random((layers, strategies)) * 10
    mem = rng.integers(0, 6, (layers, strategies))
    switch = rng.random((strategies, strategies)) * 3
    np.fill_diagonal(switch, 0)
    return time, mem, switch, int(rng.integers(0, budget_hi))


def test_dynamic_programme_equals_brute_force():
    rng = np.random.default_rng(7)
    greedy_worse = 0
    for _ in range(150):
        time, mem, switch, budget = random_problem(rng, int(rng.integers(1, 5)), int(rng.integers(1, 4)))
        best, plan = G.dp_plan(time, mem, budget, switch)
        brute, _ = G.brute_force_plan(time, mem, budget, switch)
        if math.isinf(brute):
            assert plan is None and math.isinf(best)
            continue
        assert best == pytest.approx(brute)
        t, m = G.plan_cost(time, mem, plan, switch)
        assert t == pytest.approx(best) and m <= budget
        greedy_worse += G.greedy_plan(time, mem, budget, switch)[0] > best + 1e-9
    assert greedy_worse > 10, "the random problems never tell the programme from the greedy plan"


def test_programme_errors_are_clear():
    with pytest.raises(ValueError, match="whole MiB"):
        G.dp_plan([[1.0]], [[0.5]], 3)
    with pytest.raises(ValueError, match=r"\[layers, strategies\]"):
        G.dp_plan([[1.0, 2.0]], [[1]], 3)
    with pytest.raises(ValueError, match="power of two"):
        G.Strategy(tp=3)


def test_cost_model_uses_galvatrons_constants():
    assert (G.MODEL_STATE_FACTOR, G.BWD_FWD_RATIO, G.OVERLAP_SLOWDOWN, G.TP_COLLECTIVES_PER_LAYER) == (4, 2.0, 1.3, 4)
    layer = G.LayerProfile((2.0, 0.0), 100.0, {1: 10.0, 2: 6.0}, 1.0, 1024, 1024)
    hw = G.Hardware({2: 0.0}, mixed_precision=False)
    # model states: 4 x fp32 parameters (16 B/param), over tp; FSDP over dp as well
    assert G.layer_memory_mib(layer, G.Strategy(1, 1), 0) == 400
    assert G.layer_memory_mib(layer, G.Strategy(2, 1), 0) == 200
    assert G.layer_memory_mib(layer, G.Strategy(1, 2, fsdp=True), 0) == pytest.approx(400 * (0.5 + 0.003))
    assert G.layer_memory_mib(layer, G.Strategy(1, 2, ckpt=True), 4) == pytest.approx(400 + 2)
    # backward 2x forward; checkpointing adds a forward
    assert G.layer_time_ms(layer, G.Strategy(1, 1), 3, hw) == pytest.approx(6 + 12)
    assert G.layer_time_ms(layer, G.Strategy(1, 1, ckpt=True), 3, hw) == pytest.approx(6 + 18)


def test_search_picks_a_plan_that_fits_and_prefers_a_fast_one():
    layer = G.LayerProfile((2.0, 0.5), 800.0, {1: 300, 2: 160, 4: 90, 8: 50}, 40.0, 2048, 4096)
    hw = G.Hardware({2: 0.01, 4: 0.015, 8: 0.02}, 0.02)
    roomy = G.search([layer] * 8, 8, 40000, hw, batches=(8, 16))
    tight = G.search([layer] * 8, 8, 8000, hw, batches=(8, 16))
    assert roomy.peak_mib <= 40000 and tight.peak_mib <= 8000
    assert roomy.throughput >= tight.throughput
    assert any(s.fsdp or s.ckpt for s in tight.strategies)     # memory forces sharding or recompute
    assert G.search([layer] * 8, 8, 100, hw) is None


# ------------------------------------------------------------------ float8


def test_float8_scales_are_the_formats_max_over_amax():
    x = torch.tensor([0.5, -2.0, 1.0])
    assert F8.tensorwise_scale(x, F8.E4M3).item() == pytest.approx(448 / 2)
    assert F8.tensorwise_scale(x, F8.E5M2).item() == pytest.approx(57344 / 2)
    x8, s = F8.to_float8(x, F8.E4M3)
    assert x8.dtype == torch.float8_e4m3fn and x8.float().abs().max().item() == 448
    torch.testing.assert_close(F8.from_float8(x8, s), x, rtol=0.07, atol=0)
    assert torch.isfinite(F8.tensorwise_scale(torch.zeros(3), F8.E4M3))
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        F8.tensorwise_scale(x, torch.bfloat16)


def test_float8_linear_is_close_to_the_full_precision_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 48, generator=gen, requires_grad=True)
    linear = torch.nn.Linear(48, 80, bias=False)
    f8 = F8.Float8Linear.from_linear(torch.nn.Linear(48, 80, bias=False))
    f8.weight = torch.nn.Parameter(linear.weight.detach().clone())
    y, y8 = linear(x), f8(x)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    assert 0 < rel(y8, y) < 0.06                         # e4m3: 3 mantissa bits
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx8,) = torch.autograd.grad(y8, x, g)
    assert 0 < rel(gx8, gx) < 0.1                        # e5m2 gradients: 2 mantissa bits


def test_convert_to_float8_keeps_the_output_layer():
    from gpulab.dist.model import ModelConfig, build_model
    model = build_model(ModelConfig(n_layers=2))
    assert F8.convert_to_float8(model) == 2 * 7
    assert type(model.output) is torch.nn.Linear


@pytest.mark.gpu
def test_gpu_scaled_mm_equals_the_emulation():
    if not F8.has_float8_matmul():
        pytest.skip("no float8 tensor cores")
    a = torch.randn(256, 512, device="cuda")
    b = torch.randn(512, 384, device="cuda")
    a8, sa = F8.to_float8(a, F8.E4M3)
    b8, sb = F8.to_float8(b, F8.E4M3)
    # the float8 tensor cores accumulate with fewer bits than float32 (and in another order):
    # close in norm; a wrong scale would be off by orders of magnitude
    rel = lambda x, y: ((x - y).norm() / y.norm()).item()
    fast = F8.scaled_mm(a8, sa, b8, sb, out_dtype=torch.float32)
    assert rel(fast, F8.scaled_mm_emulated(a8, sa, b8, sb)) < 2e-3
    g8, sg = F8.to_float8(a, F8.E5M2)
    assert rel(F8.scaled_mm(g8, sg, b8, sb, out_dtype=torch.float32), F8.scaled_mm_emulated(g8, sg, b8, sb)) < 2e-3
    assert rel(fast, a @ b) < 0.06                      # and both near the float32 product


@pytest.mark.gpu
def test_gpu_titan_recipe_trains_with_float8():
    # the benchmark's recipe at a small size, in a one-GPU NCCL group: the loss must fall
    # (compiled, it runs in the benchmark: compiling takes longer than this file's budget)
    import math

    import tests_dist_helpers as H
    from gpulab.dist.launch import Workers

    if not F8.has_float8_matmul():
        pytest.skip("no float8 tensor cores")
    with Workers(1, timeout_s=240) as world:
        for float8, compile_ in ((False, False), (True, False)):
            losses = world.run(H.titan_smoke, float8, compile_)[0]
            assert all(math.isfinite(x) for x in losses), losses
            assert losses[-1] < losses[0], f"float8={float8} compile={compile_}: loss did not fall {losses}"
