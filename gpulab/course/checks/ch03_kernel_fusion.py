"""Graded checks of the chapter 03 assignment (kernel fusion), on the checks engine.

Task 1  compose the library's operations into a pipeline that matches a torch preprocessing
Task 2  fuse a chain of elementwise ops by hand: one kernel, one grid-stride loop
Task 3  fuse a final reduction: a block tree in shared memory, one atomic per block
Task 4  horizontal fusion: items of different sizes in one flat buffer, one launch
Task 5  FKL's core idea: a new reusable operation (its code template and its torch twin) that
        fuses with the library's others, its parameters travelling at run time

The engine launches the learner's kernels itself, with a small grid (so a kernel without
a grid-stride loop leaves elements unwritten) whose size varies from size to size
(``TASK_GRIDS``: a stride written as a number instead of ``cuda.gridsize(1)`` skips or
repeats elements), on fresh random inputs of sizes that are not multiples of the block;
under the simulator it also records each launch, so
a plain ``+=`` across blocks or a missing ``cuda.syncthreads()`` is named even when the
simulator's thread order happens to give the right number.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from numba import cuda, float32

from ... import runtime, simtrace
from ... import fusion as fk
from ...fusion.codegen import BLOCK
from ...fusion.pipeline import Pipeline
from ...harness import reference
from ...launch import kernel
from ..feedback import require
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["TASK_BLOCK", "TASK_GRID", "TASK_GRIDS", "MEAN", "STD", "task1_preprocess", "check_task1",
           "task2_reference", "check_task2", "task3_reference", "check_task3", "make_batch",
           "task4_reference", "check_task4", "task5_reference", "check_task5", "PIPELINE", "FUSED_CHAIN",
           "FUSED_SUM", "BATCH", "SOFTPLUS"]

#: threads per block the checks launch with (a power of two; small under the simulator)
TASK_BLOCK = BLOCK
#: blocks the checks launch with, typically: far fewer threads than elements, so loops must stride
TASK_GRID = runtime.pick(2, 264)
#: the grids the checks of tasks 2 to 4 launch: the size varies, so a stride hard-coded to
#: one grid's thread count (instead of cuda.gridsize(1)) skips elements on a smaller grid
TASK_GRIDS = (TASK_GRID - 1, TASK_GRID, TASK_GRID + 1)
#: a stride written as a number: the thread count of the usual grid (hints and planted answers)
_HARD_CODED_STRIDE = TASK_GRID * TASK_BLOCK

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Launch:
    """One size of tasks 2 to 4: ``n`` elements (task 4: ``n`` items), launched on ``blocks``
    blocks of TASK_BLOCK threads along x."""
    n: int
    blocks: int = TASK_GRID

    @property
    def threads(self) -> int:
        return self.blocks * TASK_BLOCK

    def __str__(self) -> str:
        return f"{self.n} on {self.blocks} block{'s' if self.blocks > 1 else ''} of {TASK_BLOCK} threads"


_SMALLER, _, _LARGER = TASK_GRIDS
# sizes past the grid's threads run on the smaller grid before the larger one: a hard-coded
# stride skips elements there (on a GPU too); on a larger grid it only repeats them, which
# only the simulator's recorder sees
_SIZES = Sizes(sim=[_Launch(1), _Launch(7, _LARGER), _Launch(4 * BLOCK + 5, _SMALLER)],
               hidden=[_Launch(2, _SMALLER), _Launch(BLOCK + 1), _Launch(9 * BLOCK - 1, _LARGER)],
               gpu=[_Launch(1000), _Launch(3_000_001, _SMALLER), _Launch(10_000_019, _LARGER)])


# ------------------------------------------------------------------------ task 1

def _preprocess(image, crop=(8, 4, 32, 56), size=(16, 28), scale=1 / 255, scale_first=True, relu=True,
                mean=MEAN, std=STD):
    top, left, h, w = crop
    x = image[top:top + h, left:left + w].to(torch.float32)
    x = F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)
    x = x[0].permute(1, 2, 0)
    mean, std = torch.tensor(mean, device=x.device), torch.tensor(std, device=x.device)
    x = (x * scale - mean) / std if scale_first else (x - mean) / std * scale
    return torch.relu(x) if relu else x


@reference
def task1_preprocess(image: torch.Tensor) -> torch.Tensor:
    """The preprocessing to reproduce: crop, halve with a bilinear resize, scale to [0, 1],
    normalize with ImageNet's mean and std, keep the positive part. ``image``: (48, 64, 3) uint8."""
    x = image[8:40, 4:60].to(torch.float32)                       # 32 x 56 crop
    x = F.interpolate(x.permute(2, 0, 1)[None], size=(16, 28), mode="bilinear", align_corners=False)
    x = x[0].permute(1, 2, 0) * (1 / 255)
    x = (x - torch.tensor(MEAN, device=x.device)) / torch.tensor(STD, device=x.device)
    return torch.relu(x)


#: how a learner spells the class: gpulab.fusion.Pipeline (built, so no module is named as a string)
_PIPELINE_NAME = f"{Pipeline.__module__.rpartition('.')[0]}.{Pipeline.__name__}"


def _is_rgb_pipeline(pipe):
    if not isinstance(pipe, Pipeline):
        return f"pass a {_PIPELINE_NAME}, got {type(pipe).__name__}"
    if type(pipe) is not Pipeline:
        # a subclass can replace __call__ (compute in torch, say): grade the library's own class
        return (f"pass a {_PIPELINE_NAME} itself, not a subclass ({type(pipe).__name__}): the task "
                "is to compose the library's fused operations, and the check runs its fused kernel")
    if pipe.channels != 3:
        return f"the images are RGB: build the pipeline with channels=3 (got {pipe.channels})"
    if pipe.reduction is not None:
        return "the preprocessing has no reduction"
    return None


_OFF_BY_ONE_CROPS = [(8, 4, 33, 56), (8, 4, 32, 57), (9, 4, 32, 56), (8, 5, 32, 56), (8, 4, 31, 56),
                     (8, 4, 32, 55), (7, 4, 32, 56), (8, 3, 32, 56)]

PIPELINE = Task(
    chapter="03", number=1, title="compose the preprocessing as one fused pipeline", kind=FUNCTION,
    reference=task1_preprocess,
    make_inputs=lambda size, gen: torch.randint(0, 256, (48, 64, 3), generator=gen, dtype=torch.uint8),
    sizes=Sizes(sim=[0, 1], hidden=[2, 3]), rtol=1e-4, atol=1e-4, no_races=False,
    requires=[_is_rgb_pipeline], candidate_name="your pipeline",
    hints=[
        Hint(lambda case: any(case.output_matches(_preprocess(case.inputs[0], crop=c))
                              for c in _OFF_BY_ONE_CROPS),
             "The crop rectangle is off by one: fk.crop(top, left, height, width) = (8, 4, 32, 56)"),
        Hint(lambda case: tuple(case.output.shape[:2]) == (28, 16),
             "Height and width are swapped: fk.resize(height, width) = (16, 28)"),
        Hint.matches(lambda image: _preprocess(image, scale=1 / 256), "The scale is 1 / 255, not 1 / 256"),
        Hint.matches(lambda image: _preprocess(image, scale_first=False),
                     "The order of the ops: scale to [0, 1] (fk.mul) before fk.normalize"),
        Hint.matches(lambda image: _preprocess(image, relu=False), "The final fk.relu() is missing"),
        Hint.matches(lambda image: _preprocess(image, mean=MEAN[::-1], std=STD[::-1]),
                     "The mean and std are in reverse (BGR) order: the image is RGB, fk.normalize(MEAN, STD)"),
    ],
    solution="pipe",
)
check_task1 = PIPELINE.checker()


# ------------------------------------------------------------------------ task 2

@reference
def task2_reference(x: torch.Tensor) -> torch.Tensor:
    """The chain to fuse, as four unfused torch ops: ``2 * clamp(sigmoid(1.5 x + 0.25), 0.2, 0.8)``."""
    y = x * 1.5 + 0.25
    y = torch.sigmoid(y)
    y = torch.clamp(y, 0.2, 0.8)
    return y * 2.0


def _random_vector(size, gen):
    # (-4, 4): sigmoid(1.5 x + 0.25) reaches both clamp bounds
    return (torch.rand(size.n, generator=gen) - 0.5) * 8


def _launch_on_task_grid(kernel_, inputs, outputs, size):
    kernel_[size.blocks, TASK_BLOCK](*inputs, *outputs)


def _unwritten_past_grid(case) -> bool:
    mask = case.unwritten.reshape(-1)
    covered = case.size.threads
    return mask.numel() > covered and bool(mask[covered:].all()) and not bool(mask[:covered].any())


def _has_gaps(mask) -> bool:
    """An unwritten element lies between written ones: a stride that skips elements."""
    written = torch.nonzero(~mask).flatten()
    if written.numel() < 2:
        return False
    return bool(mask[int(written[0]):int(written[-1])].any())


def _race_between_blocks(case) -> bool:
    return any(f.kind == "race" and "of block" in f.message for f in case.findings)


_FIXED_STRIDE = ("stride by the grid's size, cuda.gridsize(1), not a number: the check launches grids "
                 "of different sizes (checks.TASK_GRIDS), so a fixed stride skips or repeats elements")


def _only_last_unwritten(case) -> bool:
    mask = case.unwritten.reshape(-1)
    return mask.numel() > 0 and bool(mask[-1]) and not bool(mask[:-1].any())


def _wrong_only_where_clamped(case) -> bool:
    ref, out = case.expected[0].cpu(), case.output.cpu()
    wrong = ~torch.isclose(out, ref, rtol=1e-5, atol=1e-5)
    # at the bounds (2 * 0.2, 2 * 0.8) or just inside them: a bound slightly off (0.79)
    # also makes values between it and the true bound wrong
    clamped = (ref <= 0.4 + 0.05) | (ref >= 1.6 - 0.05)
    return bool(wrong.any()) and bool(clamped[wrong].all())


FUSED_CHAIN = Task(
    chapter="03", number=2, title="fuse the chain by hand", kind=KERNEL,
    reference=task2_reference, make_inputs=_random_vector, sizes=_SIZES, trials=1,
    launch=_launch_on_task_grid, candidate_name="your fused kernel",
    hints=[
        Hint(_unwritten_past_grid, "Elements past the grid's threads (blocks * TASK_BLOCK) were never written: "
                                   "use a grid-stride loop, for i in range(cuda.grid(1), x.size, cuda.gridsize(1))"),
        Hint(_only_last_unwritten, "The last element was never written: loop up to x.size"),
        Hint(lambda case: _has_gaps(case.unwritten.reshape(-1)), "Elements between written ones were "
                                                                 "skipped: " + _FIXED_STRIDE),
        Hint(_race_between_blocks, "Threads of two blocks wrote one element: each thread starts at "
                                   "cuda.grid(1) and strides by the whole grid, cuda.gridsize(1) (the check "
                                   "launches grids of different sizes, checks.TASK_GRIDS)"),
        Hint(lambda case: not case.unwritten.any() and _wrong_only_where_clamped(case),
             "Wrong only where the clamp applies: clamp to [0.2, 0.8] after the sigmoid"),
        Hint.matches(lambda x: 2 * torch.sigmoid(torch.clamp(1.5 * x + 0.25, 0.2, 0.8)),
                     "The clamp comes before the sigmoid: the order is affine, sigmoid, clamp, scale"),
    ],
    solution="fused_chain_kernel",
)
check_task2 = FUSED_CHAIN.checker()


# ------------------------------------------------------------------------ task 3

@reference
def task3_reference(x: torch.Tensor) -> torch.Tensor:
    """What to compute in one pass: ``sum(relu(x - 0.5) ** 2)``, as a 1-element tensor."""
    return torch.square(torch.relu(x - 0.5)).sum().reshape(1)


def _source(kernel_) -> str:
    try:
        return inspect.getsource(getattr(kernel_, "py_func", kernel_))
    except (OSError, TypeError):
        return ""   # no source to read (e.g. built with exec): skip the static checks


def _atomic_on_gpu(kernel_):
    """On a GPU the race recorder cannot watch: read the source for the atomic instead."""
    if runtime.SIMULATOR:
        return None
    src = _source(kernel_)
    if src and "cuda.atomic" not in src:
        return ("blocks finish in any order and at the same time: fold each block's partial sum "
                "into out[0] with cuda.atomic.add (a plain += loses updates on a GPU)")
    return None


def _is_sum_of(case, wrong: torch.Tensor) -> bool:
    """The output equals ``wrong``, which differs from the right sum."""
    return case.output_matches(wrong) and not torch.allclose(wrong.cpu(), case.expected[0].cpu(),
                                                             rtol=1e-4, atol=1e-4)


def _sum_with_fixed_stride(case) -> torch.Tensor:
    """What a grid-stride loop with the stride hard-coded to TASK_GRID * TASK_BLOCK sums on
    the launched grid: element i once for each thread t <= i, t < threads, t = i (mod stride)."""
    (x,), threads, stride = case.inputs, case.size.threads, _HARD_CODED_STRIDE
    i = torch.arange(x.numel(), device=x.device)
    first, last = i % stride, torch.clamp(i, max=threads - 1)
    times = torch.where(first <= last, (last - first) // stride + 1, 0)
    return (torch.square(torch.relu(x - 0.5)) * times).sum().reshape(1)


def _atomics_per_block(launch) -> dict:
    """Atomic writes into the launch's last argument (the output), counted per block."""
    out = launch.arrays[-1] if launch.arrays else None
    counts: dict = {}
    for address, accesses in launch.writes.items():
        if out is None or out.index_of(address) is None:
            continue
        for a in accesses:
            if a.atomic:
                counts[a.block] = counts.get(a.block, 0) + 1
    return counts


def _launch_fused_sum(kernel_, inputs, outputs, size):
    """The task's grid; under the simulator's recorder also: at most one atomic per block."""
    with simtrace.launches_in_open_recording() as launches:   # none on a GPU: nothing to count
        _launch_on_task_grid(kernel_, inputs, outputs, size)
    for launch in launches:
        for block, count in _atomics_per_block(launch).items():
            require(count <= 1, f"one atomic per block: each block sums its threads' values in a shared-memory "
                                f"tree, then only thread 0 of each block adds the block's sum into out[0] with "
                                f"cuda.atomic.add. Block {block} made {count} atomic additions to out")


FUSED_SUM = Task(
    chapter="03", number=3, title="fuse the final reduction", kind=KERNEL,
    reference=task3_reference, make_inputs=_random_vector, sizes=_SIZES, trials=1,
    launch=_launch_fused_sum, output_fill="zeros", rtol=1e-4, atol=1e-4,
    requires=[_atomic_on_gpu], candidate_name="your fused reduction",
    hints=[
        Hint(lambda case: any(f.kind == "race" for f in case.findings),
             "Blocks run at the same time: add each block's sum into out[0] with cuda.atomic.add"),
        Hint.matches(lambda x: x.sum().reshape(1), "That is sum(x): apply relu(x - 0.5) ** 2 to each element first"),
        Hint(lambda case: _is_sum_of(case, task3_reference.__wrapped__(case.inputs[0][:case.size.threads])),
             "Only the first (blocks * TASK_BLOCK) elements were summed: use a grid-stride loop"),
        Hint(lambda case: _is_sum_of(case, _sum_with_fixed_stride(case)), "The sum matches a fixed stride: "
                                                                          + _FIXED_STRIDE),
        Hint.matches(lambda x: torch.square(torch.relu(x - 0.4)).sum().reshape(1),
                     "The threshold is 0.5: relu(x - 0.5)"),
        Hint(lambda case: float(case.output.abs().sum()) > 2 * float(case.expected[0].abs().sum()) > 0,
             "Far too large: only thread 0 of each block adds the block's sum (one atomic per block)"),
    ],
    solution="fused_sum_kernel",
)
check_task3 = FUSED_SUM.checker()


# ------------------------------------------------------------------------ task 4

def make_batch(n_items: int, gen: torch.Generator | None = None, max_size: int | None = None):
    """``n_items`` vectors of random, different lengths, packed: ``(flat, offsets, gains)``.

    Item ``k`` is ``flat[offsets[k]:offsets[k + 1]]`` (offsets int32, ``n_items + 1`` of
    them); ``gains[k]`` is its float32 gain.
    """
    gen = gen or torch.Generator().manual_seed(0)
    # item 0 is longer than the checks' largest grid covers (2 strides and some), on any device
    max_size = max_size or runtime.pick(5 * BLOCK, 2 * (TASK_GRID + 1) * TASK_BLOCK + 17)
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


def _launch_batch(kernel_, inputs, outputs, size):
    flat, offsets, gains = inputs
    # one launch for the whole batch: blockIdx.y picks the item
    kernel_[(size.blocks, gains.numel()), TASK_BLOCK](flat, offsets, gains, *outputs)


def _item_ends_unwritten(case) -> bool:
    offsets = case.inputs[1].cpu().long()
    mask = case.unwritten
    ends = [int(b) - 1 for a, b in zip(offsets[:-1], offsets[1:]) if b > a]
    return bool(mask.any()) and all(bool(mask[e]) for e in ends) and int(mask.sum()) == len(ends)


def _item_starts_unwritten(case) -> bool:
    offsets = case.inputs[1].cpu().long()
    mask = case.unwritten
    starts = [int(a) for a, b in zip(offsets[:-1], offsets[1:]) if b > a]
    return bool(mask.any()) and all(bool(mask[s]) for s in starts) and int(mask.sum()) == len(starts)


def _items(case):
    offsets = case.inputs[1].cpu().long().tolist()
    return list(zip(offsets[:-1], offsets[1:]))


def _gaps_in_an_item(case) -> bool:
    if case.error is not None:      # a launch cut off by an exception leaves gaps of its own
        return False
    return any(_has_gaps(case.unwritten[a:b]) for a, b in _items(case))


def _beyond_grid_in_an_item_unwritten(case) -> bool:
    offsets, mask = case.inputs[1].cpu().long(), case.unwritten
    covered = case.size.threads
    return not _gaps_in_an_item(case) and any(
        bool(mask[a + covered:b].all()) and not bool(mask[a:a + covered].any())
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()) if b - a > covered)


def _without_tanh(flat, offsets, gains):
    out = torch.empty_like(flat)
    for k in range(gains.numel()):
        a, b = int(offsets[k]), int(offsets[k + 1])
        out[a:b] = flat[a:b] * gains[k]
    return out


def _with_first_gain(flat, offsets, gains):
    return task4_reference.__wrapped__(flat, offsets, gains[:1].expand_as(gains))


BATCH = Task(
    chapter="03", number=4, title="fuse a batch of differently sized items into one launch", kind=KERNEL,
    reference=task4_reference, make_inputs=lambda size, gen: make_batch(size.n, gen),
    # n items (item 0 longer than the grid); the smaller grid first, as in tasks 2 and 3
    sizes=Sizes(sim=[_Launch(1), _Launch(3, _SMALLER), _Launch(5, _LARGER)],
                hidden=[_Launch(2, _LARGER), _Launch(7, _SMALLER)], gpu=[_Launch(32, _SMALLER), _Launch(256)]),
    trials=1, launch=_launch_batch,
    candidate_name="your batched kernel",
    hints=[
        Hint(lambda case: bool(case.findings) or isinstance(case.error, IndexError),
             "cuda.blockIdx.y is the item; the blocks along x share its elements"),
        Hint(_item_ends_unwritten, "The last element of each item was never written: loop up to offsets[item + 1]"),
        Hint(_item_starts_unwritten, "The first element of each item was never written: start at offsets[item] "
                                     "(plus the thread's index along x)"),
        Hint(_beyond_grid_in_an_item_unwritten,
             "An item longer than the grid's threads along x was cut short: stride by gridDim.x * blockDim.x"),
        Hint(_gaps_in_an_item, "Elements of an item between written ones were skipped: stride by "
                               "gridDim.x * blockDim.x, not a number (the check launches grids of different "
                               "sizes along x, checks.TASK_GRIDS)"),
        Hint.matches(_with_first_gain, "Every item used gains[0]: each item has its own gain, gains[item]"),
        Hint.matches(_without_tanh, "The tanh is missing: out = tanh(item * gain)"),
    ],
    solution="batch_kernel",
)
check_task4 = BATCH.checker()


# ------------------------------------------------------------------------ task 5

#: the library's own map operations: task 5 wants a new one
_LIBRARY_OPS = ("add", "mul", "affine", "square", "abs", "relu", "leaky_relu", "sigmoid", "tanh", "clamp",
                "to_float32", "to_uint8", "normalize", "rgb_to_gray", "rgb_to_yuv")
#: the chain task 5 fuses the learner's operation into: the library's ops before and after it
_BEFORE, _AFTER = (2.0, -1.0), 0.5


@reference
def task5_reference(x: torch.Tensor, beta: float, threshold: float) -> tuple:
    """The chain with torch's softplus in the middle: ``0.5 * softplus(2 x - 1, beta, threshold)``,
    twice: what the fused kernel must give and what the operation's torch twin must give."""
    y = F.softplus(x * _BEFORE[0] + _BEFORE[1], beta=beta, threshold=threshold) * _AFTER
    return y, y.clone()


def _make_softplus_inputs(size, gen):
    n, beta, threshold = size
    # 2 x - 1 spans about (-19, 17): beta * (2x - 1) crosses the threshold in both directions
    return (torch.randn(n, generator=gen) * 3, beta, threshold)


def _softplus_in_a_chain(factory):
    """What the check runs: the learner's operation between two of the library's, fused."""
    def run(x, beta, threshold):
        op = factory(beta, threshold)
        pipe = Pipeline(fk.affine(*_BEFORE), op, fk.mul(_AFTER))
        fused = pipe(x)
        twin = op.torch_fn(x * _BEFORE[0] + _BEFORE[1], op.params) * _AFTER   # the op's torch twin alone
        return fused, twin
    return run


def _builds_a_new_op(factory):
    try:
        op = factory(1.0, 20.0)
    except Exception as exc:  # noqa: BLE001  (say what went wrong instead of crashing the check)
        return f"softplus(1.0, 20.0) raised {type(exc).__name__}: {exc}"
    if not isinstance(op, fk.Op) or op.kind != "map":
        return (f"softplus(beta, threshold) must return an elementwise operation made with fk.map_op(...), "
                f"got {type(op).__name__}")
    if op.name in _LIBRARY_OPS:
        return (f"fk.{op.name} is one of the library's operations: write your own with "
                "fk.map_op(name, template, torch_fn, params=...)")
    return None


def _parameters_travel_at_run_time(factory):
    try:
        a, b = factory(1.0, 20.0), factory(2.0, 3.0)
    except Exception:  # noqa: BLE001  (_builds_a_new_op has said it)
        return None
    if a.key() != b.key():
        return ("two values of beta or threshold gave two different operations (the values are written "
                "into the code, so each would compile its own kernel): write {p0} and {p1} in the template "
                "and pass params=(beta, threshold), so one compiled kernel serves every value, as FKL's "
                "operations carry their parameters at run time")
    if len(a.params) != 2 or tuple(a.params) != (1.0, 20.0):
        return f"pass params=(beta, threshold) in that order, got params={a.params}"
    return None


def _kernel_wrong_twin_right(case) -> bool:
    fused, twin = (o.cpu() if isinstance(o, torch.Tensor) else o for o in case.outputs[:2])
    ref = case.expected[0].cpu()
    return (isinstance(fused, torch.Tensor) and isinstance(twin, torch.Tensor)
            and not torch.allclose(fused, ref, rtol=1e-5, atol=1e-5) and torch.allclose(twin, ref, rtol=1e-5, atol=1e-5))


def _twin_wrong_kernel_right(case) -> bool:
    fused, twin = (o.cpu() if isinstance(o, torch.Tensor) else o for o in case.outputs[:2])
    ref = case.expected[0].cpu()
    return (isinstance(fused, torch.Tensor) and isinstance(twin, torch.Tensor)
            and torch.allclose(fused, ref, rtol=1e-5, atol=1e-5) and not torch.allclose(twin, ref, rtol=1e-5, atol=1e-5))


def _softplus_variant(no_threshold=False, threshold_on_x=False, no_divide=False):
    def chain(x, beta, threshold):
        z = x * _BEFORE[0] + _BEFORE[1]
        smooth = torch.log1p(torch.exp(z * beta)) / (1.0 if no_divide else beta)
        if no_threshold:
            return smooth * _AFTER
        linear = (z if threshold_on_x else z * beta) > threshold
        return torch.where(linear, z, smooth) * _AFTER
    return chain


SOFTPLUS = Task(
    chapter="03", number=5, title="a reusable operation of your own, fused with the library's", kind=FUNCTION,
    reference=task5_reference, make_inputs=_make_softplus_inputs,
    # (elements, beta, threshold): beta 1 and 2, thresholds that the inputs cross
    sizes=Sizes(sim=[(7, 1.0, 20.0), (4 * BLOCK + 5, 2.0, 3.0)], hidden=[(BLOCK + 1, 0.5, 1.5)],
                gpu=[(1_000_003, 1.5, 4.0)]),
    rtol=1e-5, atol=1e-5, adapt=_softplus_in_a_chain,
    requires=[_builds_a_new_op, _parameters_travel_at_run_time], candidate_name="your softplus",
    hints=[
        Hint(_kernel_wrong_twin_right, "Your torch twin is right but the fused kernel is not: the template (the "
                                       "GPU code) differs from the twin"),
        Hint(_twin_wrong_kernel_right, "The fused kernel is right but your torch twin is not: the twin must be "
                                       "the same operation in torch, F.softplus(x, beta=p[0], threshold=p[1])"),
        Hint.matches(_softplus_variant(no_threshold=True), "Above the threshold softplus is linear: "
                     "{x} if {x} * {p0} > {p1} else ... (torch reverts to x where x * beta > threshold)",
                     rtol=1e-5, atol=1e-5),
        Hint.matches(_softplus_variant(threshold_on_x=True), "The threshold applies to x * beta, not to x",
                     rtol=1e-5, atol=1e-5),
        Hint.matches(_softplus_variant(no_divide=True), "softplus is log(1 + exp(beta x)) / beta: the division "
                     "by beta is missing", rtol=1e-5, atol=1e-5),
    ],
    solution="softplus",
)
check_task5 = SOFTPLUS.checker()


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes of each task. tests/chNN_slug/test_chNN_planted.py requires every one to be
# rejected with feedback containing its `expect` phrase.

def _pipeline(crop=(8, 4, 32, 56), size=(16, 28), scale=1 / 255, scale_first=True, relu=True, bgr=False,
              cls=Pipeline):
    norm = fk.normalize(MEAN[::-1], STD[::-1]) if bgr else fk.normalize(MEAN, STD)
    maps = [fk.mul(scale), norm] if scale_first else [norm, fk.mul(scale)]
    return cls(fk.crop(*crop), fk.resize(*size), *maps, *([fk.relu()] if relu else []), channels=3)


class _TorchPipeline(Pipeline):
    """A Pipeline in name only: its __call__ computes the preprocessing in torch."""

    def __call__(self, image, *args, **kwargs):
        return task1_preprocess.__wrapped__(image)


PIPELINE.planted = [
    Planted("crop one row too tall", _pipeline(crop=(8, 4, 33, 56)), "off by one"),
    Planted("height and width swapped", _pipeline(size=(28, 16)), "swapped"),
    Planted("scale 1/256", _pipeline(scale=1 / 256), "1 / 255"),
    Planted("normalize before scaling", _pipeline(scale_first=False), "order of the ops"),
    Planted("relu missing", _pipeline(relu=False), "relu() is missing"),
    Planted("one channel", Pipeline(fk.crop(8, 4, 32, 56), fk.resize(16, 28), fk.mul(1 / 255)), "channels=3"),
    Planted("mean and std in BGR order", _pipeline(bgr=True), "BGR"),
    Planted("a Pipeline subclass that computes in torch", _pipeline(cls=_TorchPipeline), "not a subclass"),
    Planted("the reference itself", task1_preprocess, "Pipeline"),
]


def _make_chain(mistake=None):
    no_stride, clamp_first, misses_last, in_place, cap_079, fixed_stride = (
        mistake == m for m in ("no_stride", "clamp_first", "misses_last", "in_place", "cap_079", "fixed_stride"))

    @kernel
    def chain(x, out):
        stride = x.size + 1 if no_stride else cuda.gridsize(1)
        if fixed_stride:
            stride = _HARD_CODED_STRIDE
        end = x.size - 1 if misses_last else x.size
        hi = float32(0.79) if cap_079 else float32(0.8)
        for i in range(cuda.grid(1), end, stride):
            v = x[i] * float32(1.5) + float32(0.25)
            if clamp_first:
                v = min(max(v, float32(0.2)), hi)
            v = float32(1.0) / (float32(1.0) + math.exp(-v))
            if not clamp_first:
                v = min(max(v, float32(0.2)), hi)
            if in_place:
                x[i] = v
            out[i] = v * float32(2.0)

    return chain


@kernel
def _chain_from_thread_index(x, out):
    # starts at cuda.threadIdx.x, not cuda.grid(1): every block redoes the first block's
    # elements, so threads of different blocks write one element (the same value: only the
    # simulator's tracer sees the race at the small sizes; a GPU's large ones leave gaps)
    for i in range(cuda.threadIdx.x, x.size, cuda.gridsize(1)):
        v = x[i] * float32(1.5) + float32(0.25)
        v = float32(1.0) / (float32(1.0) + math.exp(-v))
        v = min(max(v, float32(0.2)), float32(0.8))
        out[i] = v * float32(2.0)


FUSED_CHAIN.planted = [
    Planted("loop starts at cuda.threadIdx.x: blocks redo each other's elements", _chain_from_thread_index,
            "threads of two blocks wrote one element", simulator_only=True),
    Planted("no grid-stride loop", _make_chain("no_stride"), "grid-stride"),
    Planted("clamp before the sigmoid", _make_chain("clamp_first"), "clamp comes before"),
    Planted("misses the last element", _make_chain("misses_last"), "last element"),
    Planted("writes the input in place", _make_chain("in_place"), "input 0 was modified"),
    Planted("upper clamp 0.79", _make_chain("cap_079"), "where the clamp applies"),
    Planted("stride hard-coded to TASK_GRID * TASK_BLOCK", _make_chain("fixed_stride"), "cuda.gridsize(1), not a number"),
    Planted("the reference itself", task2_reference, "@gpulab.kernel"),
]


def _make_fused_sum(mistake=None):
    no_stride, no_transform, every_thread_adds, plain_add, no_sync, threshold_04, fixed_stride = (
        mistake == m for m in ("no_stride", "no_transform", "every_thread_adds", "plain_add", "no_sync",
                               "threshold_04", "fixed_stride"))

    @kernel
    def fused_sum(x, out):
        cache = cuda.shared.array(TASK_BLOCK, float32)
        t = cuda.threadIdx.x
        acc = float32(0.0)
        stride = x.size + 1 if no_stride else cuda.gridsize(1)
        if fixed_stride:
            stride = _HARD_CODED_STRIDE
        for i in range(cuda.grid(1), x.size, stride):
            if no_transform:
                acc += x[i]
            else:
                v = max(x[i] - (float32(0.4) if threshold_04 else float32(0.5)), float32(0.0))
                acc += v * v
        cache[t] = acc
        if not no_sync:
            cuda.syncthreads()
        step = TASK_BLOCK // 2
        while step > 0:
            if t < step:
                cache[t] += cache[t + step]
            if not no_sync:
                cuda.syncthreads()
            step //= 2
        if plain_add:
            if t == 0:
                out[0] += cache[0]                  # blocks race on out[0]
        elif t == 0 or every_thread_adds:
            cuda.atomic.add(out, 0, cache[0])

    return fused_sum


@kernel
def _fused_sum_atomic_per_thread(x, out):
    # right numbers, no block tree: every thread adds its own partial sum with an atomic
    acc = float32(0.0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = max(x[i] - float32(0.5), float32(0.0))
        acc += v * v
    cuda.atomic.add(out, 0, acc)


FUSED_SUM.planted = [
    Planted("sums x without the transform", _make_fused_sum("no_transform"), "relu(x - 0.5) ** 2"),
    Planted("no grid-stride loop", _make_fused_sum("no_stride"), "grid-stride"),
    Planted("every thread adds the block sum", _make_fused_sum("every_thread_adds"), "only thread 0"),
    Planted("plain += across blocks", _make_fused_sum("plain_add"), "atomic", simulator_only=True),
    Planted("no syncthreads", _make_fused_sum("no_sync"), "syncthreads", simulator_only=True),
    Planted("threshold 0.4", _make_fused_sum("threshold_04"), "threshold is 0.5"),
    Planted("stride hard-coded to TASK_GRID * TASK_BLOCK", _make_fused_sum("fixed_stride"),
            "cuda.gridsize(1), not a number"),
    # right numbers: only the recorder counts the atomics
    Planted("one atomic per thread, no block tree", _fused_sum_atomic_per_thread, "one atomic per block",
            simulator_only=True),
]


def _make_batch_kernel(mistake=None):
    x_is_item, off_by_one, first_gain, no_stride, no_tanh, fixed_stride, skips_first = (
        mistake == m for m in ("x_is_item", "off_by_one", "first_gain", "no_stride", "no_tanh", "fixed_stride",
                               "skips_first"))

    @kernel
    def batch(flat, offsets, gains, out):
        item = cuda.blockIdx.x if x_is_item else cuda.blockIdx.y
        start = offsets[item] + 1 if skips_first else offsets[item]
        end = offsets[item + 1] - 1 if off_by_one else offsets[item + 1]
        gain = gains[0] if first_gain else gains[item]
        stride = end - start + 1 if no_stride else cuda.gridDim.x * cuda.blockDim.x
        if fixed_stride:
            stride = _HARD_CODED_STRIDE
        for i in range(start + cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, end, stride):
            out[i] = flat[i] * gain if no_tanh else math.tanh(flat[i] * gain)

    return batch


BATCH.planted = [
    Planted("blockIdx.x taken as the item", _make_batch_kernel("x_is_item"), "blockIdx.y is the item",
            simulator_only=True),
    Planted("stops one short of the item's end", _make_batch_kernel("off_by_one"), "last element of each item"),
    Planted("every item uses gains[0]", _make_batch_kernel("first_gain"), "gains[item]"),
    Planted("no grid-stride loop", _make_batch_kernel("no_stride"), "stride by gridDim.x"),
    Planted("tanh missing", _make_batch_kernel("no_tanh"), "tanh is missing"),
    Planted("stride hard-coded to TASK_GRID * TASK_BLOCK", _make_batch_kernel("fixed_stride"), "not a number"),
    Planted("starts one past the item's start", _make_batch_kernel("skips_first"), "first element of each item"),
]


_GOOD_TEMPLATE = "{x} if {x} * {p0} > {p1} else math.log1p(math.exp({x} * {p0})) / {p0}"


def _softplus_twin(x, p):
    return F.softplus(x, beta=p[0], threshold=p[1])


def _make_softplus(template=_GOOD_TEMPLATE, twin=_softplus_twin, baked=False, name="softplus"):
    def softplus(beta=1.0, threshold=20.0):
        if baked:   # the values written into the code: every value compiles a kernel of its own
            code = template.replace("{p0}", repr(float(beta))).replace("{p1}", repr(float(threshold)))
            return fk.map_op(name, code, twin, params=())
        return fk.map_op(name, template, twin, params=(beta, threshold))
    return softplus


SOFTPLUS.planted = [
    Planted("no threshold branch", _make_softplus("math.log1p(math.exp({x} * {p0})) / {p0}"), "linear"),
    Planted("threshold compared with x", _make_softplus(
        "{x} if {x} > {p1} else math.log1p(math.exp({x} * {p0})) / {p0}"), "not to x"),
    Planted("no division by beta", _make_softplus(
        "{x} if {x} * {p0} > {p1} else math.log1p(math.exp({x} * {p0}))"), "division by beta"),
    Planted("parameters swapped in the template", _make_softplus(
        "{x} if {x} * {p1} > {p0} else math.log1p(math.exp({x} * {p1})) / {p1}"), "template"),
    Planted("values baked into the code", _make_softplus(baked=True), "run time"),
    Planted("torch twin ignores beta and threshold", _make_softplus(twin=lambda x, p: F.softplus(x)), "twin"),
    Planted("a library op", lambda beta=1.0, threshold=20.0: fk.sigmoid(), "library's operations"),
    Planted("the reference itself", task5_reference, "softplus(1.0, 20.0)"),
]
