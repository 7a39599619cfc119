"""Chapter 00: the first kernels against torch, and assignment 00's checks against
plausible wrong answers."""
import math

import pytest
import torch
from numba import cuda, float32

import gpulab
from gpulab.basics import (BLOCK, block_sums, reference_block_sums, reference_sum, vector_add,
                           vector_sum)
from gpulab.basics import assignment as a00
from gpulab.course.feedback import TaskFailed

TB = a00.TASK_BLOCK


def _vec(n, gen):
    return (torch.rand(n, generator=gen) - 0.5,)


@pytest.mark.parametrize("n", [1, 255, 257, 1000])
def test_vector_add_matches_torch(n):
    gpulab.check(lambda a, b, out: out.copy_(vector_add(a, b)), lambda a, b: a + b,
                 lambda n, g: (torch.rand(n, generator=g), torch.rand(n, generator=g)), sizes=(n,))


def test_block_sums_and_vector_sum_match_float64():
    gpulab.check(lambda x, out: out.copy_(block_sums(x)), reference_block_sums, _vec,
                 sizes=(1, BLOCK - 1, BLOCK + 1, 3 * BLOCK + 5), rtol=1e-5, atol=1e-5)
    gpulab.check(lambda x, out: out.copy_(vector_sum(x)), reference_sum, _vec,
                 sizes=(1, 1000, gpulab.pick(3000, 1 << 22)), rtol=1e-4, atol=1e-4)


def test_known_answer():
    x = torch.arange(1, 101, dtype=torch.float32, device=gpulab.device)
    assert vector_sum(x).item() == 5050.0


@pytest.mark.parametrize("bad, err, match", [
    (lambda: vector_add(torch.zeros(3, dtype=torch.float64, device=gpulab.device), gpulab.zeros(3)), TypeError, "float32"),
    (lambda: vector_add(gpulab.zeros(3), gpulab.zeros(4)), ValueError, "same shape"),
    (lambda: vector_sum(gpulab.zeros(2, 2)), ValueError, "1-D"),
    (lambda: vector_sum([1.0, 2.0]), TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused(bad, err, match):
    with pytest.raises(err, match=match):
        bad()


# ----------------------------------------------------------- assignment 00, task 1

@gpulab.kernel
def brighten_right(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c] + bias, 1.0)


@gpulab.kernel
def brighten_swapped(img, out, gain, bias):
    r, c = cuda.grid(2)                       # x taken as the row
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c] + bias, 1.0)


@gpulab.kernel
def brighten_off_by_one(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r <= out.shape[0] - 1 and c <= out.shape[1]:   # one column too far
        out[r, c] = min(gain * img[r, min(c, img.shape[1] - 1)] + bias, 1.0)


@gpulab.kernel
def brighten_no_clamp(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = gain * img[r, c] + bias


def test_task1_accepts_the_right_answer():
    a00.check_brighten(brighten_right, hidden=True)


@pytest.mark.parametrize("wrong", [brighten_swapped, brighten_off_by_one, brighten_no_clamp])
def test_task1_rejects_wrong_answers(wrong):
    with pytest.raises(TaskFailed, match="Task 1"):
        a00.check_brighten(wrong)


def test_task1_rejects_a_plain_function():
    with pytest.raises(TaskFailed, match="decorated with @gpulab.kernel"):
        a00.check_brighten(lambda img, out, g, b: out.copy_(img))


# ----------------------------------------------------------- assignment 00, task 2

@gpulab.kernel
def sums_right(x, partial):
    cache = cuda.shared.array(TB, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    cache[t] = x[i] if i < x.size else float32(0.0)
    cuda.syncthreads()
    step = TB // 2
    while step > 0:
        if t < step:
            cache[t] += cache[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = cache[0]


@gpulab.kernel
def sums_reads_past_end(x, partial):
    cache = cuda.shared.array(TB, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    cache[t] = x[i]                            # no bounds check
    cuda.syncthreads()
    step = TB // 2
    while step > 0:
        if t < step:
            cache[t] += cache[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = cache[0]


@gpulab.kernel
def sums_no_sync(x, partial):
    cache = cuda.shared.array(TB, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    cache[t] = x[i] if i < x.size else float32(0.0)
    step = TB // 2                             # no barrier before or during the tree
    while step > 0:
        if t < step:
            cache[t] += cache[t + step]
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = cache[0]


@gpulab.kernel
def sums_short_tree(x, partial):
    cache = cuda.shared.array(TB, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    cache[t] = x[i] if i < x.size else float32(0.0)
    cuda.syncthreads()
    step = TB // 2
    while step > 1:                            # stops one step early
        if t < step:
            cache[t] += cache[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = cache[0]


def test_task2_accepts_the_right_answer():
    a00.check_block_sums(sums_right, hidden=True)


@pytest.mark.parametrize("wrong", [sums_reads_past_end, sums_no_sync, sums_short_tree])
def test_task2_rejects_wrong_answers(wrong):
    with pytest.raises(TaskFailed, match="Task 2"):
        a00.check_block_sums(wrong)


# ----------------------------------------------------------- assignment 00, task 3

def sum_right(x):
    while x.numel() > 1:
        partial = torch.empty(math.ceil(x.numel() / TB), device=x.device)
        sums_right[partial.numel(), TB](x, partial)
        x = partial
    return x.clone()


def sum_drops_last_block(x):
    while x.numel() > 1:
        partial = torch.empty(max(1, x.numel() // TB), device=x.device)
        sums_right[partial.numel(), TB](x, partial)
        x = partial
    return x


def sum_one_pass(x):
    partial = torch.empty(math.ceil(x.numel() / TB), device=x.device)
    sums_right[partial.numel(), TB](x, partial)
    return partial[:1]


def sum_with_torch(x):
    partial = torch.empty(math.ceil(x.numel() / TB), device=x.device)
    sums_right[partial.numel(), TB](x, partial)
    return partial.sum().reshape(1)


def sum_with_reference(x):
    return reference_sum(x)


def test_task3_accepts_the_right_answer():
    a00.check_vector_sum(sum_right, hidden=True)


@pytest.mark.parametrize("wrong, why", [(sum_drops_last_block, "Task 3"), (sum_one_pass, "Task 3"),
                                        (sum_with_torch, "torch.sum|Tensor.sum"),
                                        (sum_with_reference, "reference")])
def test_task3_rejects_wrong_answers(wrong, why):
    with pytest.raises(TaskFailed, match=why):
        a00.check_vector_sum(wrong)
