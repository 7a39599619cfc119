"""gpulab.check and gpulab.bench refuse what they cannot call, before running anything, and
say what to pass instead (a learner's usual slip: check(f(), ...) for check(f, ...))."""
import pytest
import torch

import gpulab


def _inputs(size, gen):
    return (torch.rand(size, generator=gen),)


def _double(x):
    return 2 * x


def _double_into(x, out):
    out.copy_(2 * x)


@pytest.mark.parametrize("position, role", [(0, "candidate"), (1, "reference_fn"), (2, "make_inputs")])
def test_check_names_the_argument_that_is_not_callable(position, role):
    args = [_double_into, _double, _inputs]
    args[position] = None  # what a function without a return gives back when called
    with pytest.raises(TypeError, match=rf"check: {role} must be callable .* got NoneType None; "
                                        r"pass the function itself, e\.g\. check\(my_fn, \.\.\.\)"):
        gpulab.check(*args)


def test_check_refuses_a_result_in_place_of_the_candidate():
    calls = []

    def candidate(x, out):
        calls.append(1)
        out.copy_(2 * x)

    with pytest.raises(TypeError, match=r"candidate must be callable .* got Tensor"):
        gpulab.check(torch.zeros(3), _double, _inputs)
    with pytest.raises(ValueError, match="trials must be a positive int, got 0"):
        gpulab.check(candidate, _double, _inputs, trials=0)
    assert calls == []  # refused before anything ran
    assert gpulab.check(candidate, _double, _inputs, sizes=(1, 7)).cases == 4


def test_bench_refuses_what_it_cannot_call():
    with pytest.raises(TypeError, match=r"bench: fn must be callable .* got float 3\.0; .* bench\(my_fn, \.\.\.\)"):
        gpulab.bench(3.0)
    with pytest.raises(ValueError, match="reps must be a positive int"):
        gpulab.bench(_double, torch.ones(4), reps=0)
    assert gpulab.bench(_double, torch.ones(4), reps=1).name == "_double"
