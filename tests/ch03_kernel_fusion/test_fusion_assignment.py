"""The chapter 03 assignment checks pass the right answers and reject plausible wrong ones."""
import math

import pytest
import torch

import gpulab  # noqa: I001  (before numba: it picks GPU or simulator)
from numba import cuda, float32
from gpulab import fusion as fk
from gpulab.course.feedback import TaskFailed
from gpulab.fusion import assignment as A

# A planted wrong kernel may read or write out of bounds. On a real GPU that can leave the
# process's CUDA context broken (every later CUDA call fails), so these run under the
# simulator only: what they test is the check's logic, which is the same on both.
planted_bugs_simulator_only = pytest.mark.skipif(
    gpulab.ON_GPU, reason="a planted out-of-bounds kernel can break the CUDA context on a GPU")

BLOCK = A.TASK_BLOCK
MEAN, STD = A.MEAN, A.STD


# ------------------------------------------------------------------------ task 1

def _task1(crop=(8, 4, 32, 56), size=(16, 28), scale=1 / 255, order="normal"):
    norm = fk.normalize(MEAN, STD)
    maps = [fk.mul(scale), norm, fk.relu()] if order == "normal" else [norm, fk.mul(scale), fk.relu()]
    return fk.Pipeline(fk.crop(*crop), fk.resize(*size), *maps, channels=3)


def test_task1_accepts_the_solution():
    A.check_task1(_task1())


@pytest.mark.parametrize("wrong", [
    _task1(crop=(8, 4, 33, 56)),               # off-by-one crop (rows 8..40 inclusive)
    _task1(size=(28, 16)),                     # height and width swapped
    _task1(scale=1 / 256),                     # wrong scale
    _task1(order="normalize first"),           # ops in the wrong order
    fk.Pipeline(fk.crop(8, 4, 32, 56), fk.resize(16, 28), fk.mul(1 / 255), fk.normalize(MEAN, STD), channels=3),
])
def test_task1_rejects_wrong_pipelines(wrong):
    with pytest.raises(TaskFailed):
        A.check_task1(wrong)


def test_task1_rejects_non_pipelines_and_reference_calls():
    with pytest.raises(TaskFailed, match="Pipeline"):
        A.check_task1(A.task1_preprocess)
    with pytest.raises(TaskFailed, match="channels=3"):
        A.check_task1(fk.Pipeline(fk.relu()))


# ------------------------------------------------------------------------ task 2

@gpulab.kernel
def task2_right(x, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, stride):
        v = x[i] * float32(1.5) + float32(0.25)
        v = float32(1.0) / (float32(1.0) + math.exp(-v))
        v = min(max(v, float32(0.2)), float32(0.8))
        out[i] = v * float32(2.0)


@gpulab.kernel
def task2_no_grid_stride(x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i] * float32(1.5) + float32(0.25)
        v = float32(1.0) / (float32(1.0) + math.exp(-v))
        out[i] = min(max(v, float32(0.2)), float32(0.8)) * float32(2.0)


@gpulab.kernel
def task2_clamp_before_sigmoid(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = min(max(x[i] * float32(1.5) + float32(0.25), float32(0.2)), float32(0.8))
        out[i] = float32(2.0) / (float32(1.0) + math.exp(-v))


@gpulab.kernel
def task2_misses_last(x, out):
    for i in range(cuda.grid(1), x.size - 1, cuda.gridsize(1)):
        v = float32(1.0) / (float32(1.0) + math.exp(-(x[i] * float32(1.5) + float32(0.25))))
        out[i] = min(max(v, float32(0.2)), float32(0.8)) * float32(2.0)


@gpulab.kernel
def task2_in_place(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = float32(1.0) / (float32(1.0) + math.exp(-(x[i] * float32(1.5) + float32(0.25))))
        out[i] = min(max(x[i], float32(0.2)), float32(0.8)) * float32(2.0)


def test_task2_accepts_the_solution():
    A.check_task2(task2_right)


@pytest.mark.parametrize("wrong", [task2_no_grid_stride, task2_clamp_before_sigmoid, task2_misses_last,
                                   task2_in_place, A.task2_reference])
def test_task2_rejects_wrong_kernels(wrong):
    with pytest.raises(TaskFailed):
        A.check_task2(wrong)


# ------------------------------------------------------------------------ task 3

def _make_task3(mode):
    # plain bools: numba freezes them into the kernel as constants
    no_stride, no_transform, every_thread_adds = (mode == m for m in ("no_stride", "no_transform",
                                                                       "every_thread_adds"))

    @gpulab.kernel
    def kernel(x, out):
        cache = cuda.shared.array(BLOCK, float32)
        t = cuda.threadIdx.x
        acc = float32(0.0)
        stride = x.size + 1 if no_stride else cuda.gridsize(1)
        for i in range(cuda.grid(1), x.size, stride):
            if no_transform:
                acc += x[i]
            else:
                v = max(x[i] - float32(0.5), float32(0.0))
                acc += v * v
        cache[t] = acc
        cuda.syncthreads()
        step = BLOCK // 2
        while step > 0:
            if t < step:
                cache[t] += cache[t + step]
            cuda.syncthreads()
            step //= 2
        if t == 0 or every_thread_adds:
            cuda.atomic.add(out, 0, cache[0])
    return kernel


@gpulab.kernel
def task3_plain_add(x, out):
    cache = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = max(x[i] - float32(0.5), float32(0.0))
        acc += v * v
    cache[t] = acc
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            cache[t] += cache[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        out[0] += cache[0]        # a race between blocks on a GPU


@gpulab.kernel
def task3_no_sync(x, out):
    cache = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = max(x[i] - float32(0.5), float32(0.0))
        acc += v * v
    cache[t] = acc
    step = BLOCK // 2
    while step > 0:
        if t < step:
            cache[t] += cache[t + step]
        step //= 2
    if t == 0:
        cuda.atomic.add(out, 0, cache[0])


def test_task3_accepts_the_solution():
    A.check_task3(_make_task3("right"))


@pytest.mark.parametrize("mode", ["no_transform", "no_stride", "every_thread_adds"])
def test_task3_rejects_wrong_reductions(mode):
    with pytest.raises(TaskFailed):
        A.check_task3(_make_task3(mode))


def test_task3_names_the_race_and_the_missing_barrier():
    # the simulator runs one block at a time, so only the source check can name the race;
    # on a GPU the lost updates show first, as wrong values
    with pytest.raises(TaskFailed, match="atomic" if gpulab.SIMULATOR else "atomic|cases wrong"):
        A.check_task3(task3_plain_add)
    with pytest.raises(TaskFailed):      # wrong values, or else the source check names the barrier
        A.check_task3(task3_no_sync)


# ------------------------------------------------------------------------ task 4

def _make_task4(mode):
    x_is_item, off_by_one, first_gain, no_stride = (mode == m for m in ("x_is_item", "off_by_one",
                                                                       "first_gain", "no_stride"))

    @gpulab.kernel
    def kernel(flat, offsets, gains, out):
        item = cuda.blockIdx.x if x_is_item else cuda.blockIdx.y
        start = offsets[item]
        end = offsets[item + 1] - 1 if off_by_one else offsets[item + 1]
        gain = gains[0] if first_gain else gains[item]
        stride = end - start + 1 if no_stride else cuda.gridDim.x * cuda.blockDim.x
        for i in range(start + cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, end, stride):
            out[i] = math.tanh(flat[i] * gain)
    return kernel


def test_task4_accepts_the_solution():
    A.check_task4(_make_task4("right"))


@planted_bugs_simulator_only
@pytest.mark.parametrize("mode", ["x_is_item", "off_by_one", "first_gain", "no_stride"])
def test_task4_rejects_wrong_batches(mode):
    with pytest.raises(TaskFailed):
        A.check_task4(_make_task4(mode))


def test_task4_batch_helper_makes_different_sizes():
    flat, offsets, gains = A.make_batch(6, torch.Generator().manual_seed(1))
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    assert len(set(sizes)) > 1 and offsets[-1] == flat.numel() and gains.shape == (6,)
    assert offsets.dtype == torch.int32
