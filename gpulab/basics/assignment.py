"""Graded checks of assignment 00 (solutions/00_start_here.ipynb).

Task 1: ``brighten_kernel(img, out, gain, bias)``, a 2-D kernel with bounds checks:
        ``out[r, c] = min(gain * img[r, c] + bias, 1)``, launched with 16x16 blocks,
        x along columns: ``kernel[(ceil(W/16), ceil(H/16)), (16, 16)](img, out, gain, bias)``.
Task 2: ``block_sums_kernel(x, partial)``: blocks of TASK_BLOCK threads, one element per
        thread, ``partial[b]`` = sum of block b's elements, via a shared-memory tree.
Task 3: ``vector_sum(x)``: the sum of a vector of any length as a 1-element tensor,
        computed with the learner's kernels (no torch reductions).

Each check feeds fresh random inputs of awkward sizes and rejects the plausible wrong
answers: swapped row/column indices, a missing or off-by-one bounds check (the output
is a window of a larger poisoned buffer, so a stray write is seen), reading past the end
(the input is followed by NaN), a missing ``syncthreads``, the last partial block
dropped, and calling a library reduction instead of computing.
"""
from __future__ import annotations

import math

import torch

from .. import runtime
from ..harness import compare, candidate_running, forbid_calls
from ..launch import launch_count
from ..course.feedback import require, task, is_kernel

__all__ = ["TASK_BLOCK", "check_brighten", "check_block_sums", "check_vector_sum",
           "brighten_reference", "block_sums_reference"]

#: threads per block in task 2 (the learner's kernel declares a shared array this size)
TASK_BLOCK = 128


def brighten_reference(img: torch.Tensor, gain: float, bias: float) -> torch.Tensor:
    return torch.clamp(gain * img.double() + bias, max=1.0).to(img.dtype)


def block_sums_reference(x: torch.Tensor, block: int = TASK_BLOCK) -> torch.Tensor:
    n_blocks = max(1, math.ceil(x.numel() / block))
    padded = torch.zeros(n_blocks * block, dtype=torch.float64, device=x.device)
    padded[: x.numel()] = x.double()
    return padded.view(n_blocks, block).sum(1).to(x.dtype)


def _framed(shape, pad: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaN-filled buffer with ``pad`` spare rows/cols around a window of ``shape``."""
    h, w = shape
    buf = torch.full((h + 2 * pad, w + 2 * pad), float("nan"), device=runtime.device)
    return buf, buf[pad:pad + h, pad:pad + w]


def _frame_touched(buf: torch.Tensor, pad: int = 2) -> bool:
    inner = torch.zeros_like(buf, dtype=torch.bool)
    inner[pad:-pad, pad:-pad] = True
    return bool((~torch.isnan(buf) & ~inner).any())


def _image_shapes(hidden: bool):
    shapes = [(1, 1), (16, 16), (17, 33), (40, 23), (5, 70)]
    if hidden:
        shapes += [(31, 2), (3, 49)]
    if runtime.ON_GPU:
        shapes += [(1080, 1920), (997, 1283)]
    return shapes


def check_brighten(kernel, hidden: bool = False) -> None:
    """Task 1: the 2-D brighten kernel."""
    with task("Task 1 (2-D kernel with bounds checks)"):
        require(is_kernel(kernel), "pass the kernel itself (a function decorated with @gpulab.kernel)")
        gen = torch.Generator().manual_seed(torch.seed() % 2**31)
        for h, w in _image_shapes(hidden):
            img = torch.rand(h, w, generator=gen).to(runtime.device)
            gain = 0.5 + float(torch.rand(1, generator=gen))
            bias = 0.3 * float(torch.rand(1, generator=gen))
            buf, out = _framed((h, w))
            grid = (math.ceil(w / 16), math.ceil(h / 16))
            try:
                with candidate_running("brighten_kernel"):
                    kernel[grid, (16, 16)](img, out, gain, bias)
                runtime.synchronize()
            except IndexError as exc:
                require(False, f"image {h}x{w}: an index went out of bounds ({exc}). Check `if r < H and "
                               "c < W` and that x (the first index of cuda.grid(2)) is the column")
            require(not _frame_touched(buf), f"image {h}x{w}: the kernel wrote outside the image. "
                    "Guard every write with `if r < out.shape[0] and c < out.shape[1]`")
            problem, _, _ = compare(out, brighten_reference(img, gain, bias))
            if problem and torch.isnan(out).any() and h != w:
                problem += ". Unwritten pixels on a non-square image: are rows and columns swapped?"
            require(problem is None, f"image {h}x{w}: {problem}")


def _vector_with_nan_tail(n: int, gen) -> torch.Tensor:
    """A length-n view whose memory continues with NaN: reading past the end shows."""
    buf = torch.full((n + 257,), float("nan"))
    buf[:n] = torch.rand(n, generator=gen) - 0.5
    return buf.to(runtime.device)[:n]


def _vector_sizes(hidden: bool):
    sizes = [1, 5, TASK_BLOCK - 1, TASK_BLOCK, TASK_BLOCK + 1, 3 * TASK_BLOCK + 17]
    if hidden:
        sizes += [2 * TASK_BLOCK, 700]
    if runtime.ON_GPU:
        sizes += [1 << 20, (1 << 22) + 3]
    return sizes


def check_block_sums(kernel, hidden: bool = False) -> None:
    """Task 2: one partial sum per block of TASK_BLOCK threads."""
    with task("Task 2 (shared-memory block reduction)"):
        require(is_kernel(kernel), "pass the kernel itself (a function decorated with @gpulab.kernel)")
        gen = torch.Generator().manual_seed(torch.seed() % 2**31)
        for n in _vector_sizes(hidden):
            for trial in range(2):  # twice: a race shows up as a result that changes
                x = _vector_with_nan_tail(n, gen)
                blocks = math.ceil(n / TASK_BLOCK)
                partial = torch.full((blocks,), float("nan"), device=runtime.device)
                try:
                    with candidate_running("block_sums_kernel"):
                        kernel[blocks, TASK_BLOCK](x, partial)
                    runtime.synchronize()
                except IndexError as exc:
                    require(False, f"n={n}: an index went out of bounds ({exc}). Threads past the end "
                                   "of x must contribute 0, not read x")
                expected = block_sums_reference(x)
                problem, _, _ = compare(partial, expected, rtol=1e-5, atol=1e-5)
                if problem and torch.isnan(partial).any() and not torch.isnan(partial[:-1]).any():
                    problem += (". Only the last block is NaN: threads past the end read x "
                                "instead of contributing 0")
                elif problem:
                    problem += (". If the error changes between runs, a cuda.syncthreads() is missing "
                                "(after filling shared memory, and after each step of the tree)")
                require(problem is None, f"n={n} ({blocks} blocks of {TASK_BLOCK}): {problem}")


_TORCH_REDUCTIONS = [(torch, "sum"), (torch.Tensor, "sum"), (torch, "cumsum"), (torch.Tensor, "cumsum"),
                     (torch, "mean"), (torch.Tensor, "mean"), (torch, "dot"), (torch, "matmul"),
                     (torch.Tensor, "__matmul__"), (torch, "einsum"), (torch.Tensor, "tolist")]


def check_vector_sum(vector_sum, hidden: bool = False) -> None:
    """Task 3: the sum of any number of elements, by the learner's own kernels."""
    with task("Task 3 (sum of a vector whose size is not a multiple of the block)"):
        require(callable(vector_sum), "pass your vector_sum function")
        gen = torch.Generator().manual_seed(torch.seed() % 2**31)
        sizes = _vector_sizes(hidden)
        if runtime.ON_GPU:
            sizes.append(TASK_BLOCK * TASK_BLOCK + 1)  # needs three passes of block sums
        for n in sizes:
            x = _vector_with_nan_tail(n, gen)
            before = launch_count()
            with candidate_running("vector_sum"), forbid_calls(
                    _TORCH_REDUCTIONS, "the sum must come from your own kernels"):
                result = vector_sum(x)
            runtime.synchronize()
            if n > 1:
                require(launch_count() > before, f"n={n}: vector_sum launched no gpulab kernel")
            require(isinstance(result, torch.Tensor), f"n={n}: return a tensor, got {type(result).__name__}")
            result = result.reshape(-1)
            require(result.numel() == 1, f"n={n}: return 1 element, got shape {tuple(result.shape)}")
            expected = x.double().sum().reshape(1).float()
            problem, _, _ = compare(result.float(), expected, rtol=1e-4, atol=1e-4)
            if problem and torch.isnan(result).any():
                problem += ". A NaN means elements past the end of x were read"
            elif problem:
                problem += (". Is the last partial block dropped (use ceil(n / block) blocks), or do you "
                            "stop before a single value is left?")
            require(problem is None, f"n={n}: {problem}")
