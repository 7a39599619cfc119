"""What a GEMM kernel asks of an SM, how many of its blocks fit, and in how many waves a
launch runs.

- ``get_regs_per_thread`` and ``get_shared_mem_per_block`` read the compiled kernel (numba's
  dispatcher methods of the same names): on a GPU only, the simulator compiles nothing.
  ``shared_bytes_of`` is what the kernel declares, known without compiling.
- Blocks per SM come from chapter 01's occupancy calculator (``gpulab.arch.occupancy``):
  the course has one calculator, not two. :func:`blocks_per_sm` is the one place that calls it.
- ``waves(tiles, sms, blocks_per_sm)``: a launch of ``tiles`` blocks runs in
  ceil(tiles / (sms * blocks_per_sm)) rounds; the last one may be mostly idle (the "tail").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import runtime
from ..arch.occupancy import occupancy as chapter01_occupancy
from .tiling import RegisterTiling

__all__ = ["H200_SMS", "KernelResources", "compiled_kernel", "signature_of", "get_regs_per_thread",
           "get_shared_mem_per_block",
           "shared_bytes_of", "blocks_per_sm", "waves", "resources_of"]

#: streaming multiprocessors of an H200 (SXM, 141 GB)
H200_SMS = 132


def signature_of(kern, args) -> tuple:
    """numba types of a launch's arguments (torch tensors as device arrays)."""
    from numba.cuda import as_cuda_array
    return tuple(kern.dispatcher.typeof_pyval(as_cuda_array(a) if isinstance(a, torch.Tensor) else a)
                 for a in args)


def compiled_kernel(kern, args):
    """The kernel compiled for a launch's arguments (numba's _Kernel: its registers,
    shared and local memory are properties of it)."""
    if not runtime.ON_GPU:
        raise RuntimeError("registers and compiled shared memory are known only on a GPU: the simulator "
                           "compiles nothing (shared_bytes_of gives what a kernel declares)")
    return kern.dispatcher.compile(signature_of(kern, args))


def get_regs_per_thread(kern, args) -> int:
    """Registers per thread of ``kern`` compiled for ``args`` (a launch's arguments)."""
    return int(compiled_kernel(kern, args).regs_per_thread)


def get_shared_mem_per_block(kern, args) -> int:
    """Static shared memory per block (bytes) of ``kern`` compiled for ``args``."""
    return int(compiled_kernel(kern, args).shared_mem_per_block)


def shared_bytes_of(name: str, tile: int = 16, cfg: RegisterTiling | None = None) -> int:
    """Shared memory the ladder's kernel ``name`` declares per block (float32 words x 4)."""
    if name in ("naive", "coalesced"):
        return 0
    if name == "tiled":
        return 4 * 2 * tile * tile              # the paper's 2 T^2 floats
    if cfg is None:
        raise ValueError(f"the register-tiled kernel {name!r} needs its RegisterTiling (cfg=...)")
    return cfg.shared_bytes * (2 if name == "double_buffered" else 1)


def blocks_per_sm(threads_per_block: int, registers_per_thread: int | None,
                  shared_bytes_per_block: int) -> tuple[int | None, str]:
    """(blocks per SM, the limiting resource) from chapter 01's occupancy calculator
    (:func:`gpulab.arch.occupancy.occupancy`, H200 limits): the one call into it.
    (None, why) while the registers are unknown (under the simulator)."""
    if registers_per_thread is None:
        return None, "registers unknown (a GPU compiles the kernel)"
    result = chapter01_occupancy(threads_per_block, registers_per_thread, shared_bytes_per_block)
    return int(result.blocks_per_sm), str(result.limited_by)


def waves(tiles: int, sms: int, blocks_per_sm: int) -> int:
    """Rounds a launch of ``tiles`` blocks takes when ``sms * blocks_per_sm`` run at once."""
    if tiles < 0 or sms < 1 or blocks_per_sm < 1:
        raise ValueError(f"need tiles >= 0, sms >= 1 and blocks_per_sm >= 1, got {tiles}, {sms}, {blocks_per_sm}")
    return math.ceil(tiles / (sms * blocks_per_sm))


@dataclass
class KernelResources:
    """One kernel's demands and what follows from them on one launch."""

    name: str
    threads: int
    shared_bytes: int
    registers: int | None
    blocks_per_sm: int | None
    limiter: str
    tiles: int
    waves: int | None

    @property
    def occupancy(self) -> float | None:
        """Resident threads per SM over the H200's 2048."""
        if self.blocks_per_sm is None:
            return None
        return self.blocks_per_sm * self.threads / 2048


def resources_of(name: str, m: int, n: int, tile: int = 16, registers: int | None = None,
                 sms: int = H200_SMS) -> KernelResources:
    """The resources of the ladder's kernel ``name`` on an M x N output: threads, declared
    shared memory, blocks per SM (chapter 01's calculator, given the registers) and waves."""
    from . import kernels as K   # noqa: PLC0415 (kernels imports this module's users)

    _, grid, block, _ = K.launch_config(name, m, n, tile)
    threads = block if isinstance(block, int) else math.prod(block)
    cfg = getattr(K.launch_config(name, 1, 1, tile)[0], "config", None)
    shared = shared_bytes_of(name, tile, cfg)
    fit, limiter = blocks_per_sm(threads, registers, shared)
    tiles = math.prod(grid)
    return KernelResources(name, threads, shared, registers, fit, limiter, tiles,
                           None if fit is None or fit == 0 else waves(tiles, sms, fit))
