"""Graded checks of assignment 00 (solutions/00_start_here.ipynb), on the checks engine.

Task 1: ``brighten_kernel(img, out, gain, bias)``, a 2-D kernel with bounds checks:
        ``out[r, c] = min(gain * img[r, c] + bias, 1)``, launched with 16x16 blocks,
        x along columns: ``kernel[(ceil(W/16), ceil(H/16)), (16, 16)](img, out, gain, bias)``.
Task 2: ``block_sums_kernel(x, partial)``: blocks of TASK_BLOCK threads, one element per
        thread, ``partial[b]`` = sum of block b's elements, via a shared-memory tree.
Task 3: ``vector_sum(x)``: the sum of a vector of any length as a 1-element tensor,
        computed by the learner's kernels (the host only allocates and launches).

Each task declares its planted wrong answers at the end of this module; the engine
(:mod:`.engine`) gives the NaN frames, the race recorder and the host-code rules.
"""
from __future__ import annotations

import ctypes
import math
import sys

import torch
from numba import cuda, float32

from ... import runtime, simtrace
from ...basics import kernels as basics_kernels
from ...harness import compare, reference
from ...launch import kernel
from . import engine
from ..feedback import require
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["TASK_BLOCK", "check_brighten", "check_block_sums", "check_vector_sum",
           "brighten_reference", "block_sums_reference", "vector_sum_reference",
           "BRIGHTEN", "BLOCK_SUMS", "VECTOR_SUM"]

#: threads per block in task 2 (the learner's kernel declares a shared array this size)
TASK_BLOCK = 128
TB = TASK_BLOCK


# ------------------------------------------------------------------ task 1

@reference
def brighten_reference(img: torch.Tensor, gain: float, bias: float) -> torch.Tensor:
    return torch.clamp(gain * img.double() + bias, max=1.0).to(img.dtype)


def _brighten_inputs(size, gen):
    h, w = size
    img = torch.rand(h, w, generator=gen)
    img.view(-1)[0] = 1.0           # a pixel that surely reaches the cap
    if img.numel() > 1:
        img.view(-1)[-1] = 0.0      # and one that surely stays below it
    gain = 0.9 + 0.6 * float(torch.rand(1, generator=gen))    # gain + bias > 1: the cap matters
    bias = 0.15 + 0.15 * float(torch.rand(1, generator=gen))  # bias > 0: an ignored bias shows
    return img, gain, bias


def _launch_brighten(kernel, inputs, outputs, size):
    img, gain, bias = inputs
    h, w = size
    kernel[(math.ceil(w / 16), math.ceil(h / 16)), (16, 16)](img, outputs[0], gain, bias)


def _wrong_only_where_capped(case) -> bool:
    out, ref = case.output.cpu(), case.expected[0].cpu()
    wrong = ~torch.isclose(out, ref, rtol=1e-5, atol=1e-5)
    return bool(wrong.any()) and bool((ref[wrong] >= 1.0 - 1e-6).all())


def _above_one(case) -> bool:
    return bool((case.output.cpu() > 1.0 + 1e-6).any())


def _only_first_block_written(case) -> bool:
    written = ~torch.isnan(case.output.cpu())
    if written.shape[0] <= 16 and written.shape[1] <= 16:
        return False  # the whole image is one block: nothing to tell apart
    return bool(written[:16, :16].all()) and not bool(written[16:].any() or written[:, 16:].any())


BRIGHTEN = Task(
    chapter="00", number=1, title="2-D kernel with bounds checks", kind=KERNEL,
    reference=brighten_reference, make_inputs=_brighten_inputs,
    sizes=Sizes(sim=[(1, 1), (16, 16), (17, 33), (40, 23), (5, 70)], hidden=[(31, 2), (3, 49)],
                gpu=[(1080, 1920), (997, 1283)]),
    launch=_launch_brighten, candidate_name="brighten_kernel",
    hints=[
        Hint(lambda case: case.error is not None or case.frame_touched,
             "Guard every write with `if r < out.shape[0] and c < out.shape[1]`, and take x "
             "(the first index of cuda.grid(2)) as the column"),
        Hint(lambda case: bool(case.findings) or _only_first_block_written(case),
             "Each thread must handle its own pixel: c, r = cuda.grid(2) (block index times block "
             "size plus thread index), not cuda.threadIdx alone"),
        Hint(lambda case: case.unwritten_only and case.size[0] != case.size[1]
             and not _only_first_block_written(case),
             "Unwritten pixels on a non-square image: are rows and columns swapped? "
             "c, r = cuda.grid(2): x runs along columns"),
        Hint(lambda case: _wrong_only_where_capped(case) and _above_one(case),
             "Values above 1.0: the cap is missing (out = min(gain * img + bias, 1.0))"),
        Hint(lambda case: _wrong_only_where_capped(case) and not _above_one(case),
             "Wrong only where the result is capped: the cap is exactly 1.0"),
        Hint.matches(lambda img, gain, bias: torch.clamp(gain * img, max=1.0),
                     "The output matches gain * img without the bias: use the bias argument"),
        Hint.matches(lambda img, gain, bias: torch.clamp(img + bias, max=1.0),
                     "The output matches img + bias: the gain argument is ignored"),
    ],
    solution="brighten_kernel",
)
check_brighten = BRIGHTEN.checker()


# ------------------------------------------------------------------ task 2

@reference
def block_sums_reference(x: torch.Tensor, block: int = TASK_BLOCK) -> torch.Tensor:
    """One float64 sum per block of ``block`` elements (the lecture's reference, at the
    task's block size)."""
    return basics_kernels.reference_block_sums(x, block)


def _random_vector(n, gen):
    return torch.rand(n, generator=gen) - 0.5


def _tree_problem(launch, n: int) -> str | None:
    """A shared-memory tree leaves a mark the result does not: in every full block, every
    thread stores its element in shared memory and, after the first barrier, half of them
    add pairs. One thread looping over the block (no tree) writes from one thread only."""
    for b in range(n // TB):   # full blocks only: a tree may skip the padding of the last one
        writers = {a.thread for (blk, _), accesses in launch.shared_writes.items() if blk == (b, 0, 0)
                   for a in accesses}
        tree_writers = {a.thread for (blk, _), accesses in launch.shared_writes.items() if blk == (b, 0, 0)
                        for a in accesses if a.phase >= 1}
        if len(writers) < TB // 2 or len(tree_writers) < TB // 4:
            return (f"the sum must be a tree in shared memory: every thread stores its element in a "
                    f"shared array, then at each step (after cuda.syncthreads()) half of the "
                    f"threads add pairs. In block {b}, {len(writers)} of {TB} threads wrote shared memory "
                    f"and {len(tree_writers)} after the first barrier (one thread looping over the block "
                    "is not a tree)")
    return None


def _launch_block_sums(kernel, inputs, outputs, size):
    (x,), (partial,) = inputs, outputs
    with simtrace.launches_in_open_recording() as launches:
        kernel[partial.numel(), TASK_BLOCK](x, partial)
    for launch in launches:
        problem = _tree_problem(launch, x.numel())
        require(problem is None, problem or "")


def _even_slots_only(x):
    """What a tree that stops one step early leaves in slot 0: the even positions' sum."""
    n_blocks = max(1, math.ceil(x.numel() / TB))
    padded = torch.zeros(n_blocks * TB, dtype=torch.float64)
    padded[: x.numel()] = x.double().cpu()
    return padded.view(n_blocks, TB)[:, 0::2].sum(1).float()


_VECTOR_SIZES = Sizes(sim=[1, 5, TB - 1, TB, TB + 1, 3 * TB + 17], hidden=[2 * TB, 700],
                      gpu=[1 << 20, (1 << 22) + 3])

BLOCK_SUMS = Task(
    chapter="00", number=2, title="shared-memory block reduction", kind=KERNEL,
    reference=block_sums_reference, make_inputs=lambda n, gen: _random_vector(n, gen),
    sizes=_VECTOR_SIZES, launch=_launch_block_sums, rtol=1e-5, atol=1e-5,
    candidate_name="block_sums_kernel",
    hints=[
        Hint(lambda case: isinstance(case.error, IndexError) or (
                not case.findings and torch.isnan(case.output[-1:]).all()
                and compare(case.output[:-1].cpu(), case.expected[0][:-1].cpu(), 1e-5, 1e-5)[0] is None),
             "Threads past the end of x must contribute 0, not read x (read x[i] only if i < x.size)"),
        # the recorder names the racing writes; on a GPU (no recorder) the unwritten slots show it
        Hint(lambda case: any(f.array == "partial" for f in case.findings) or (
                case.output.numel() > 1 and torch.isnan(case.output[1:]).all()),
             "Each block writes its own slot: partial[cuda.blockIdx.x], by one thread"),
        Hint.matches(_even_slots_only,
                     "Only the even positions were added: the tree stops one step early (go down to step 1)"),
    ],
    solution="block_sums_kernel",
)
check_block_sums = BLOCK_SUMS.checker()


# ------------------------------------------------------------------ task 3

@reference
def vector_sum_reference(x: torch.Tensor) -> torch.Tensor:
    return x.double().sum().reshape(1).float()


_TORCH_REDUCTIONS = [(torch, "sum"), (torch.Tensor, "sum"), (torch, "cumsum"), (torch.Tensor, "cumsum"),
                     (torch, "mean"), (torch.Tensor, "mean"), (torch, "dot"), (torch, "matmul"),
                     (torch.Tensor, "__matmul__"), (torch, "einsum"), (torch.Tensor, "tolist")]


def _grid_problem(launch) -> str | None:
    """Each pass launches ceil(n / TB) blocks of TB threads, n being the size of the pass's
    input (the largest array of the launch)."""
    n = max((math.prod(a.shape) for a in launch.arrays), default=0)
    blocks_needed = math.ceil(n / TB)
    if launch.block != (TB, 1, 1) or launch.grid[1:] != (1, 1) or launch.grid[0] < blocks_needed:
        return (f"each pass must be a parallel launch of ceil(n / {TB}) blocks of {TB} threads "
                f"(kernel[ceil(n / {TB}), {TB}], n the pass's input size): {launch.kernel} was launched "
                f"with grid {launch.grid} and blocks {launch.block} on an input of {n}")
    return None


def _with_grid_check(candidate):
    """The candidate, with each of its launches' grids checked under the simulator's recorder."""
    def vector_sum_checked(x):
        with simtrace.launches_in_open_recording() as launches:
            result = candidate(x)
        for launch in launches:
            problem = _grid_problem(launch)
            require(problem is None, problem or "")
        return result

    return vector_sum_checked


def _first_elements_sum(count):
    return lambda x: x[:count].double().sum().reshape(1).float()


VECTOR_SUM = Task(
    chapter="00", number=3, title="sum of a vector whose size is not a multiple of the block",
    kind=FUNCTION, reference=vector_sum_reference, make_inputs=lambda n, gen: _random_vector(n, gen),
    # 401 before 129: a first failure there tells "one pass" from "last block dropped".
    # Not caught under the simulator: a hard-coded two passes, right up to TB * TB elements;
    # only the GPU's TB * TB + 1 (three passes) shows it, 16385 elements being too slow to
    # simulate within the tests' budget.
    sizes=Sizes(sim=[1, 5, TB - 1, TB, 3 * TB + 17, TB + 1], hidden=[2 * TB, 700],
                gpu=[1 << 20, (1 << 22) + 3, TB * TB + 1]),  # the last needs three passes
    rtol=1e-4, atol=1e-4, kernel_only=True, needs_launch=lambda n: n > 1,
    forbidden=_TORCH_REDUCTIONS, forbidden_why="the sum must come from your own kernels",
    own_kernels=(basics_kernels,), candidate_name="vector_sum", adapt=_with_grid_check,
    hints=[
        Hint(lambda case: case.output_matches(_first_elements_sum(TB)(case.inputs[0])),
             "Only the first block's sum came back: one pass is not enough, repeat the passes "
             "until one value is left"),
        Hint(lambda case: case.output_matches(
                _first_elements_sum(case.size // TB * TB)(case.inputs[0])) or case.output_matches(
                _first_elements_sum(TB * TB * (case.size // (TB * TB)) or TB)(case.inputs[0])),
             "The last partial block is dropped: launch ceil(n / 128) blocks, not n // 128"),
        Hint(lambda case: torch.isnan(case.output).any(),
             "A NaN means elements past the end of x were read"),
    ],
    solution="vector_sum",
)
check_vector_sum = VECTOR_SUM.checker()


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes of each task. tests/chNN_slug/test_chNN_planted.py requires every one to be
# rejected with feedback containing its `expect` phrase.


# -- task 1
@kernel
def _brighten_swapped(img, out, gain, bias):
    r, c = cuda.grid(2)                       # x taken as the row
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c] + bias, 1.0)


@kernel
def _brighten_off_by_one(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c <= out.shape[1]:   # one column too far
        out[r, c] = min(gain * img[r, min(c, img.shape[1] - 1)] + bias, 1.0)


@kernel
def _brighten_no_cap(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = gain * img[r, c] + bias


@kernel
def _brighten_cap_099(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c] + bias, 0.99)


@kernel
def _brighten_no_bias(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c], 1.0)


@kernel
def _brighten_no_gain(img, out, gain, bias):
    c, r = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(img[r, c] + bias, 1.0)


@kernel
def _brighten_thread_index(img, out, gain, bias):
    c, r = cuda.threadIdx.x, cuda.threadIdx.y   # every block redoes block 0's pixels
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = min(gain * img[r, c] + bias, 1.0)


# -- task 2 (and a correct block sum that task 3's planted answers build on)
def _make_block_sums(mistake=None):
    # plain bools: numba freezes them into the kernel as constants
    no_guard, no_sync, short_tree, sync_in_branch, early_return, slot_zero = (
        mistake == m for m in ("no_guard", "no_sync", "short_tree", "sync_in_branch",
                               "early_return", "slot_zero"))

    @kernel
    def block_sums(x, partial):
        cache = cuda.shared.array(TB, dtype=float32)
        t = cuda.threadIdx.x
        i = cuda.grid(1)
        if early_return and i >= x.size:
            return                                  # leaves the block's barriers
        if no_guard:
            cache[t] = x[i]
        else:
            cache[t] = x[i] if i < x.size else float32(0.0)
        if not no_sync:
            cuda.syncthreads()
        step = TB // 2
        while step > (1 if short_tree else 0):
            if t < step:
                cache[t] += cache[t + step]
                if sync_in_branch:
                    cuda.syncthreads()              # only the active half reaches it
            if not (no_sync or sync_in_branch):
                cuda.syncthreads()
            step //= 2
        if t == 0:
            partial[0 if slot_zero else cuda.blockIdx.x] = cache[0]

    return block_sums


_sums_right = _make_block_sums()


@kernel
def _block_sums_by_thread_zero(x, partial):
    # right numbers, no tree: thread 0 adds the block's elements one by one
    if cuda.threadIdx.x == 0:
        start = cuda.blockIdx.x * cuda.blockDim.x
        total = float32(0.0)
        for j in range(start, min(start + cuda.blockDim.x, x.size)):
            total += x[j]
        partial[cuda.blockIdx.x] = total


# -- task 3
def _sum_one_pass(x):
    partial = torch.empty(math.ceil(x.numel() / TB), dtype=torch.float32, device=x.device)
    _sums_right[partial.numel(), TB](x, partial)
    return partial[:1]


def _sum_drops_last_block(x):
    while x.numel() > 1:
        partial = torch.empty(max(1, x.numel() // TB), dtype=torch.float32, device=x.device)
        _sums_right[partial.numel(), TB](x, partial)
        x = partial
    return x


def _sum_finished_by_torch(x):
    partial = torch.empty(math.ceil(x.numel() / TB), dtype=torch.float32, device=x.device)
    _sums_right[partial.numel(), TB](x, partial)
    return partial.sum().reshape(1)


def _sum_finished_by_numpy(x):
    partial = torch.empty(math.ceil(x.numel() / TB), dtype=torch.float32, device=x.device)
    _sums_right[partial.numel(), TB](x, partial)
    return torch.from_numpy(partial.cpu().numpy().sum(keepdims=True))


def _sum_finished_by_python(x):
    partial = torch.empty(math.ceil(x.numel() / TB), dtype=torch.float32, device=x.device)
    _sums_right[partial.numel(), TB](x, partial)
    return torch.full((1,), sum(float(p) for p in partial))


@kernel
def _serial_sum(x, out):
    total = float32(0.0)
    for i in range(x.size):
        total += x[i]
    out[0] = total


def _sum_by_one_thread(x):
    out = torch.empty(1, dtype=torch.float32, device=x.device)
    _serial_sum[1, 1](x, out)     # one thread walks the whole vector: no parallel passes
    return out


def _sum_by_reference(x):
    return vector_sum_reference(x)


def _sum_by_package_kernel(x):
    partial = torch.empty(1, dtype=torch.float32, device=x.device)
    basics_kernels.block_sums_kernel[1, basics_kernels.BLOCK](x, partial)
    return partial


# -- cheats on the checker itself (a simulated kernel and host code are plain Python)
def _expected_in_the_checker_frames():
    """The checker's expected output, if some frame of some thread holds it."""
    for frame in sys._current_frames().values():
        while frame is not None:
            found = frame.f_locals.get("expected")
            if isinstance(found, tuple) and found and isinstance(found[0], torch.Tensor):
                return found[0]
            frame = frame.f_back
    return None


@kernel
def _brighten_copies_the_expected(img, out, gain, bias):
    c, r = cuda.grid(2)
    expected = _expected_in_the_checker_frames()   # only the simulator runs this Python
    if expected is not None and r < out.shape[0] and c < out.shape[1]:
        out[r, c] = float(expected[r, c])


@kernel
def _copy_first(src, dst):
    if cuda.grid(1) == 0:
        dst[0] = src[0]


def _sum_copies_the_expected(x):
    out = torch.zeros(1, dtype=torch.float32, device=x.device)
    expected = _expected_in_the_checker_frames()
    if expected is not None:
        _copy_first[1, 1](expected, out)  # "computed" by a kernel: a copy of the answer
    return out


def _sum_patches_the_comparison(x):
    engine.compare = lambda *args, **kwargs: (None, 0.0, 0.0)  # every answer "matches"
    return _sum_one_pass(x)


def _sum_finished_through_raw_memory(x):
    partial = torch.empty(math.ceil(x.numel() / TB), dtype=torch.float32, device=x.device)
    _sums_right[partial.numel(), TB](x, partial)
    values = (ctypes.c_float * partial.numel()).from_address(partial.data_ptr())
    values[0] = sum(values)   # the host adds the partial sums through the raw pointer
    return partial[:1]


BRIGHTEN.planted = [
    Planted("rows and columns swapped", _brighten_swapped, "swapped"),
    # under the simulator the write raises IndexError (the tracer names thread and index), on a
    # GPU it lands in the output's frame ("wrote outside the output"): the hint says both
    Planted("bounds check one column too far", _brighten_off_by_one, "guard every write"),
    Planted("cap missing", _brighten_no_cap, "cap is missing"),
    Planted("cap at 0.99", _brighten_cap_099, "capped"),
    Planted("bias argument ignored", _brighten_no_bias, "bias"),
    Planted("gain argument ignored", _brighten_no_gain, "gain"),
    Planted("thread index instead of grid index", _brighten_thread_index, "cuda.grid(2)"),
    # the kernel finds no expected output to copy: the engine computes it after the run
    Planted("copies the expected output from the checker's frames", _brighten_copies_the_expected,
            "never written", simulator_only=True),   # sys._current_frames() is no device code
]
BLOCK_SUMS.planted = [
    Planted("reads past the end of x", _make_block_sums("no_guard"), "past the end", simulator_only=True),
    Planted("no syncthreads", _make_block_sums("no_sync"), "syncthreads() is missing", simulator_only=True),
    Planted("tree stops one step early", _make_block_sums("short_tree"), "one step early"),
    Planted("barrier inside a branch", _make_block_sums("sync_in_branch"), "barrier", simulator_only=True),
    Planted("threads past the end return before the barriers", _make_block_sums("early_return"),
            "returned before", simulator_only=True),
    Planted("every block writes partial[0]", _make_block_sums("slot_zero"), "partial[cuda.blockIdx.x]"),
    # right numbers: only the recorder sees that one thread did the block's work
    Planted("thread 0 loops over its block, no tree", _block_sums_by_thread_zero, "tree in shared memory",
            simulator_only=True),
]
VECTOR_SUM.planted = [
    Planted("one pass only", _sum_one_pass, "until one value is left"),
    Planted("last partial block dropped", _sum_drops_last_block, "ceil(n / 128)"),
    Planted("finished on the host with torch", _sum_finished_by_torch, "sum must come from your own kernels"),
    Planted("finished on the host with numpy", _sum_finished_by_numpy, "on the host"),
    Planted("finished on the host in Python", _sum_finished_by_python, "on the host"),
    Planted("calls the reference", _sum_by_reference, "reference"),
    # right numbers: only the recorder sees the launch's grid
    Planted("one thread sums the whole vector", _sum_by_one_thread, "blocks of 128 threads",
            simulator_only=True),
    Planted("the package's own kernel", _sum_by_package_kernel, "course package's own"),
    Planted("copies the expected output from the checker's frames", _sum_copies_the_expected, "elements wrong"),
    Planted("patches the checker's comparison", _sum_patches_the_comparison, "changed the checker"),
    # simulator only: if the refusal failed, ctypes would read a device pointer on the host
    Planted("finished on the host through the raw pointer", _sum_finished_through_raw_memory, "raw memory",
            simulator_only=True),
]
