"""Graded checks of the chapter 03 assignment (kernel fusion).

Task 1  compose the library's operations into a pipeline that matches a torch preprocessing
Task 2  fuse a chain of elementwise ops by hand: one kernel, one grid-stride loop
Task 3  fuse a final reduction: a block tree in shared memory, one atomic per block
Task 4  horizontal fusion: items of different sizes in one flat buffer, one launch

Each ``check_taskN`` launches the learner's kernel itself, with a small fixed grid (so a
kernel without a grid-stride loop leaves elements unwritten), on fresh random inputs of
sizes that are not multiples of the block, and compares with the torch reference.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from .. import runtime
from ..course.feedback import is_kernel, require, task
from ..harness import check, reference
from .codegen import BLOCK
from .pipeline import Pipeline

__all__ = ["TASK_BLOCK", "TASK_GRID", "MEAN", "STD", "task1_preprocess", "check_task1",
           "task2_reference", "check_task2", "task3_reference", "check_task3", "make_batch",
           "task4_reference", "check_task4"]

#: threads per block the checks launch with (a power of two; small under the simulator)
TASK_BLOCK = BLOCK
#: blocks the checks launch with: far fewer threads than elements, so loops must stride
TASK_GRID = runtime.pick(2, 264)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SIZES = runtime.pick((1, 7, 4 * BLOCK + 5), (1, 1000, 3_000_001))
#: the instructor's hidden tests: other awkward sizes, more trials
_HIDDEN_SIZES = runtime.pick((2, BLOCK + 1, 9 * BLOCK - 1), (3, 65_537, 10_000_019))


def _source(kernel) -> str:
    try:
        return inspect.getsource(getattr(kernel, "py_func", kernel))
    except (OSError, TypeError):
        return ""   # no source to read (e.g. built with exec): skip the static checks


# ------------------------------------------------------------------------ task 1

@reference
def task1_preprocess(image: torch.Tensor) -> torch.Tensor:
    """The preprocessing to reproduce: crop, halve with a bilinear resize, scale to [0, 1],
    normalize with ImageNet's mean and std, keep the positive part. ``image``: (48, 64, 3) uint8."""
    x = image[8:40, 4:60].to(torch.float32)                       # 32 x 56 crop
    x = F.interpolate(x.permute(2, 0, 1)[None], size=(16, 28), mode="bilinear", align_corners=False)
    x = x[0].permute(1, 2, 0) * (1 / 255)
    x = (x - torch.tensor(MEAN, device=x.device)) / torch.tensor(STD, device=x.device)
    return torch.relu(x)


def check_task1(pipe, hidden: bool = False) -> None:
    with task("Task 1: compose the preprocessing as one fused pipeline"):
        require(isinstance(pipe, Pipeline), f"pass a gpulab.fusion.Pipeline, got {type(pipe).__name__}")
        require(pipe.channels == 3, f"the images are RGB: build the pipeline with channels=3 (got {pipe.channels})")
        require(pipe.reduction is None, "the preprocessing has no reduction")

        def make(size, gen):
            return torch.randint(0, 256, (48, 64, 3), generator=gen, dtype=torch.uint8)

        check(pipe, task1_preprocess, make, sizes=(0,), trials=4 if hidden else 2, writes_outputs=False,
              rtol=1e-4, atol=1e-4, name="your pipeline")


# ------------------------------------------------------------------------ task 2

@reference
def task2_reference(x: torch.Tensor) -> torch.Tensor:
    """The chain to fuse, as four unfused torch ops: ``2 * clamp(sigmoid(1.5 x + 0.25), 0.2, 0.8)``."""
    y = x * 1.5 + 0.25
    y = torch.sigmoid(y)
    y = torch.clamp(y, 0.2, 0.8)
    return y * 2.0


def _random_vector(size, gen):
    return (torch.rand(size, generator=gen) - 0.5) * 8


def check_task2(kernel, hidden: bool = False) -> None:
    with task("Task 2: fuse the chain by hand"):
        require(is_kernel(kernel), "pass the kernel itself, decorated with @gpulab.kernel")

        def run(x, out):
            kernel[TASK_GRID, TASK_BLOCK](x, out)

        check(run, task2_reference, _random_vector, sizes=_HIDDEN_SIZES if hidden else _SIZES, trials=2,
              name="your fused kernel")


# ------------------------------------------------------------------------ task 3

@reference
def task3_reference(x: torch.Tensor) -> torch.Tensor:
    """What to compute in one pass: ``sum(relu(x - 0.5) ** 2)``, as a 1-element tensor."""
    return torch.square(torch.relu(x - 0.5)).sum().reshape(1)


def check_task3(kernel, hidden: bool = False) -> None:
    with task("Task 3: fuse the final reduction"):
        require(is_kernel(kernel), "pass the kernel itself, decorated with @gpulab.kernel")

        def run(x):
            out = torch.zeros(1, dtype=torch.float32, device=x.device)
            kernel[TASK_GRID, TASK_BLOCK](x, out)
            return out

        check(run, task3_reference, _random_vector, sizes=_HIDDEN_SIZES if hidden else _SIZES, trials=2,
              writes_outputs=False, rtol=1e-4, atol=1e-4, name="your fused reduction")
        # races the simulator cannot show (it runs one block at a time): read the source
        src = _source(kernel)
        if src:
            require("cuda.atomic" in src,
                    "blocks finish in any order and at the same time: fold each block's partial sum "
                    "into out[0] with cuda.atomic.add (a plain += loses updates on a GPU)")
            require("shared" not in src or "syncthreads" in src,
                    "you use shared memory but never call cuda.syncthreads(): a thread may read a "
                    "neighbour's slot before it is written")


# ------------------------------------------------------------------------ task 4

def make_batch(n_items: int, gen: torch.Generator | None = None, max_size: int | None = None):
    """``n_items`` vectors of random, different lengths, packed: ``(flat, offsets, gains)``.

    Item ``k`` is ``flat[offsets[k]:offsets[k + 1]]`` (offsets int32, ``n_items + 1`` of
    them); ``gains[k]`` is its float32 gain.
    """
    gen = gen or torch.Generator().manual_seed(0)
    max_size = max_size or runtime.pick(5 * BLOCK, 20_000)
    sizes = torch.randint(0, max_size, (n_items,), generator=gen)
    sizes[0] = max_size        # one item needs several strides of the grid
    offsets = torch.zeros(n_items + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(sizes, 0)
    flat = (torch.rand(int(offsets[-1]), generator=gen) - 0.5) * 4
    gains = torch.rand(n_items, generator=gen) * 2 + 0.1
    return flat, offsets, gains


@reference
def task4_reference(flat: torch.Tensor, offsets: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Item by item, as a loop of small launches would: ``tanh(item * gain)``."""
    out = torch.empty_like(flat)
    for k in range(gains.numel()):
        a, b = int(offsets[k]), int(offsets[k + 1])
        out[a:b] = torch.tanh(flat[a:b] * gains[k])
    return out


def check_task4(kernel, hidden: bool = False) -> None:
    with task("Task 4: fuse a batch of differently sized items into one launch"):
        require(is_kernel(kernel), "pass the kernel itself, decorated with @gpulab.kernel")

        def run(flat, offsets, gains, out):
            # one launch for the whole batch: blockIdx.y picks the item
            kernel[(TASK_GRID, gains.numel()), TASK_BLOCK](flat, offsets, gains, out)

        def make(n_items, gen):
            return make_batch(n_items, gen)

        sizes = runtime.pick((2, 7), (3, 100)) if hidden else runtime.pick((1, 3, 5), (1, 32, 256))
        check(run, task4_reference, make, sizes=sizes, trials=2,
              name="your batched kernel")
