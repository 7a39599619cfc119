"""Chapter 17: the task suite, task audits, timing metrics."""
import math

import pytest
import torch

import gpulab
from gpulab.kernelagent import SUITE, audit_task, fast_p, geometric_mean_speedup, get_task, plausible
from gpulab.kernelagent.tasks import CHAIN4, Task, chain_reference_ops, _vector, _VEC_SIM, _VEC_GPU


def test_suite_covers_levels_and_has_ten_tasks():
    assert len(SUITE) >= 10
    levels = {t.level for t in SUITE.values()}
    assert levels == {1, 2, 3}
    assert {"layernorm", "rmsnorm", "softmax", "attention"} <= set(SUITE)


def test_tasks_give_shapes_that_are_not_block_multiples_and_deterministic_inputs():
    for task in SUITE.values():
        assert len(task.shapes) >= 3, task.name
        a = task.inputs(task.shapes[1], 7)
        b = task.inputs(task.shapes[1], 7)
        c = task.inputs(task.shapes[1], 8)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[0], c[0])
        assert len(a) == len(task.input_names)


@pytest.mark.parametrize("name", sorted(SUITE))
def test_every_task_passes_the_audit(name):
    assert audit_task(name) == []


def test_audit_flags_a_degenerate_task():
    # relu(-|x| - 1) is always 0: any constant "kernel" would pass such a task
    degenerate = Task("dead_relu", 1, "always zero", lambda x, y: torch.relu(-x.abs() - 1) + 0 * y,
                      ("x", "y"), _vector(2), _VEC_SIM, _VEC_GPU, (16,), lambda s: 12.0 * s[0])
    problems = audit_task(degenerate)
    assert any("same for every seed" in p for p in problems)
    assert any("'y'" in p for p in problems) and any("'x'" in p for p in problems)


def test_known_answers():
    x = torch.tensor([[0.0, 1.0, -1.0]])
    torch.testing.assert_close(SUITE["softmax"].reference(x),
                               torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))
    torch.testing.assert_close(SUITE["row_sum"].reference(x), torch.tensor([0.0]))
    torch.testing.assert_close(SUITE["axpy"].reference(torch.tensor([2.0]), torch.tensor([1.0])),
                               torch.tensor([6.0]))
    w = torch.tensor([2.0, 2.0, 2.0])
    rms = math.sqrt(2.0 / 3.0 + 1e-6)
    torch.testing.assert_close(SUITE["rmsnorm"].reference(x, w), 2.0 * x / rms)
    q = torch.zeros(2, 2)
    v = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    torch.testing.assert_close(SUITE["attention"].reference(q, q, v), torch.tensor([[3.0, 5.0], [3.0, 5.0]]))


def test_chain_reference_applies_ops_in_order():
    x = torch.tensor([-1.0, 0.5, 4.0])
    y = torch.sigmoid(torch.clamp(torch.relu(x * 1.5 + 0.25), max=2.0))
    torch.testing.assert_close(chain_reference_ops(CHAIN4)(x), y)
    torch.testing.assert_close(SUITE["chain4"].reference(x), y)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="no task named 'gemm'"):
        get_task("gemm")


def test_reference_source_is_available_for_prompts():
    assert "layer_norm" in SUITE["layernorm"].reference_source()


def test_fast_p_and_geometric_mean():
    results = [(True, 2.0), (True, 0.5), (False, 10.0), (True, 1.0)]
    assert fast_p(results, 0.0) == 0.75          # correctness rate
    assert fast_p(results, 1.0) == 0.25          # correct *and* faster than the baseline
    assert math.isclose(geometric_mean_speedup([2.0, 0.5, 4.0]), 4 ** (1 / 3))
    with pytest.raises(ValueError):
        fast_p([])
    with pytest.raises(ValueError, match="positive"):
        geometric_mean_speedup([1.0, 0.0])


def test_plausible_bounds_time_by_the_roofline():
    # 4 GB at 4000 GB/s cannot take less than 1 ms
    ok, why = plausible(1.1, 4e9, 0.0, 4000.0, 50000.0)
    assert ok and "plausible" in why
    ok, why = plausible(0.2, 4e9, 0.0, 4000.0, 50000.0)
    assert not ok and "faster than the hardware allows" in why
    ok, _ = plausible(0.5, 0.0, 100e9, 4000.0, 50000.0)   # 100 GFLOP at 50 TFLOP/s: 2 ms
    assert not ok
