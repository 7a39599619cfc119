"""Chapter 00: the first kernels against torch, and what assignment 00's checks refuse
before running anything (its planted wrong answers run in tests/course/test_planted.py)."""
import pytest
import torch
import gpulab
from gpulab.basics import (BLOCK, block_sums, multiprocessor_count, reference_block_sums, reference_sum,
                           reference_transpose, transpose, vector_add, vector_sum)
from gpulab.course.checks import ch00_start_here as a00
from gpulab.course.feedback import TaskFailed


def _vec(n, gen):
    return (torch.rand(n, generator=gen) - 0.5,)


@pytest.mark.parametrize("n", [1, 255, 257, 1000])
def test_vector_add_matches_torch(n):
    gpulab.check(lambda a, b, out: out.copy_(vector_add(a, b)), lambda a, b: a + b,
                 lambda n, g: (torch.rand(n, generator=g), torch.rand(n, generator=g)), sizes=(n,))


def test_block_sums_and_vector_sum_match_float64():
    gpulab.check(lambda x, out: out.copy_(block_sums(x)), reference_block_sums, _vec,
                 sizes=(1, BLOCK - 1, BLOCK + 1, 3 * BLOCK + 5), trials=1, rtol=1e-5, atol=1e-5)
    gpulab.check(lambda x, out: out.copy_(vector_sum(x)), reference_sum, _vec,
                 sizes=(1, 1000) + gpulab.pick((), (1 << 22,)), trials=1, rtol=1e-4, atol=1e-4)  # 1000: two passes


def test_known_answer():
    x = torch.arange(1, 101, dtype=torch.float32, device=gpulab.device)
    assert vector_sum(x).item() == 5050.0


@pytest.mark.parametrize("tiled", [True, False])
def test_transpose_matches_torch_on_awkward_shapes(tiled):
    # 33 x 17: neither side a multiple of the 32x32 tile; 5 x 40: a tile row cut short
    gpulab.check(lambda x, out: out.copy_(transpose(x, tiled=tiled)), reference_transpose,
                 lambda shape, g: (torch.rand(*shape, generator=g),),
                 sizes=((1, 1), (33, 17), (5, 40)) + gpulab.pick((), ((1000, 1337),)), trials=1)


def test_vector_sum_asks_the_device_for_its_multiprocessors():
    if gpulab.SIMULATOR:
        with pytest.raises(gpulab.ModeError, match="no multiprocessors"):
            multiprocessor_count()
    else:
        assert multiprocessor_count() == torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.parametrize("bad, err, match", [
    (lambda: transpose(gpulab.zeros(3)), ValueError, "2-D"),
    (lambda: transpose(torch.zeros(2, 2, dtype=torch.float64, device=gpulab.device)), TypeError, "float32"),
    (lambda: vector_add(torch.zeros(3, dtype=torch.float64, device=gpulab.device), gpulab.zeros(3)), TypeError, "float32"),
    (lambda: vector_add(gpulab.zeros(3), gpulab.zeros(4)), ValueError, "same shape"),
    (lambda: vector_sum(gpulab.zeros(2, 2)), ValueError, "1-D"),
    (lambda: vector_sum([1.0, 2.0]), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused(bad, err, match):
    with pytest.raises(err, match=match):
        bad()


# ----------------------------------------------------------- assignment 00

def test_kernel_tasks_refuse_a_plain_function():
    with pytest.raises(TaskFailed, match="decorated with @gpulab.kernel"):
        a00.check_brighten(lambda img, out, g, b: out.copy_(img))
    with pytest.raises(TaskFailed, match="decorated with @gpulab.kernel"):
        a00.check_block_sums(lambda x, partial: None)


def test_vector_sum_refuses_something_not_callable():
    with pytest.raises(TaskFailed, match="pass a callable"):
        a00.check_vector_sum(42)


def test_an_exercise_stub_reads_as_not_done():
    def vector_sum(x):
        raise NotImplementedError("write vector_sum")

    with pytest.raises(TaskFailed, match="not done yet"):
        a00.check_vector_sum(vector_sum)
